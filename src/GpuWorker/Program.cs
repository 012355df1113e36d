using Cluster.GpuWorker.Hosting;

return await WorkerProgram.RunAsync(args);
