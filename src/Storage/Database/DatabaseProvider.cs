namespace Cluster.Storage.Database;

public enum DatabaseProvider
{
    Sqlite,
    Postgres,
}
