namespace Cluster.Contracts;
