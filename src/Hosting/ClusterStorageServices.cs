using Cluster.Storage.Database;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace Cluster.Hosting;

public static class ClusterStorageServices
{
    /// <summary>Registers the database (one factory for the configured provider) for every process.</summary>
    public static IServiceCollection AddClusterDatabase(this IServiceCollection services, ClusterRuntimeSettings settings)
    {
        var factory = new ClusterDbContextFactory(settings.DatabaseProvider, settings.DatabaseConnectionString);
        services.AddSingleton(factory);
        services.AddSingleton<IDbContextFactory<ClusterDbContext>>(factory);
        services.AddSingleton(settings);
        return services;
    }
}
