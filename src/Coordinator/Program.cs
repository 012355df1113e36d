using Cluster.Coordinator.Cli;

return await CoordinatorCli.RunAsync(args);
