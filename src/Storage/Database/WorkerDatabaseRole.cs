using System.Text.RegularExpressions;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Storage.Database;

/// <summary>
/// The rights a GPU worker's PostgreSQL role needs, and no more: it reads the cluster's tables (the jobs it runs name
/// rows it looks up) and writes only the results a worker records (segments and their epoch metrics, feature shards and
/// the images they skipped, self-test runs). It cannot change the schema, and cannot touch sweeps, trials, feature
/// sets, datasets or the worker registry, which the coordinator alone writes. Granted by `coordinator db migrate
/// --worker-role ROLE` after the schema is current, so the rights follow the tables of each release.
/// </summary>
public static partial class WorkerDatabaseRole
{
    /// <summary>What a worker writes: inserts and updates its records; replaces a segment's metrics when it records it again.</summary>
    private static readonly (Type Entity, string Rights)[] s_writes =
    [
        (typeof(SegmentRecord), "INSERT, UPDATE"),
        (typeof(EpochMetricRecord), "INSERT, UPDATE, DELETE"),
        (typeof(FeatureShardRecord), "INSERT, UPDATE"),
        (typeof(SkippedImageRecord), "INSERT, UPDATE"),
        (typeof(SelfTestRunRecord), "INSERT"),
    ];

    /// <summary>A plain PostgreSQL identifier: granted to as given, never quoted into something else.</summary>
    [GeneratedRegex("^[a-z_][a-z0-9_]{0,62}$")]
    private static partial Regex PlainName();

    /// <summary>Revokes whatever the role held on the schema's tables, then grants the worker's rights. Idempotent.</summary>
    public static async Task GrantAsync(ClusterDbContext db, string role, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(db);
        if (!db.Database.IsNpgsql())
        {
            throw new InvalidOperationException("a worker role is a PostgreSQL role; the embedded SQLite database has none");
        }
        if (role is null || !PlainName().IsMatch(role))
        {
            throw new ArgumentException($"worker role '{role}' must be a plain PostgreSQL name: lower-case letters, digits and '_', not starting with a digit");
        }
        string schema = db.Model.GetDefaultSchema() ?? "public";
        var statements = new List<string>
        {
            $"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
            $"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}",
            $"GRANT USAGE ON SCHEMA {schema} TO {role}",
            $"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            // The identity columns of the metric and skipped-image rows draw from sequences.
            $"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        };
        foreach ((Type entity, string rights) in s_writes)
        {
            string table = db.Model.FindEntityType(entity)?.GetTableName()
                ?? throw new InvalidOperationException($"{entity.Name} is not in the model");
            statements.Add($"GRANT {rights} ON {schema}.{table} TO {role}");
        }
        // In one transaction, inside the execution strategy (Npgsql's retrying strategy refuses a transaction begun outside it).
        await db.Database.CreateExecutionStrategy().ExecuteAsync(async () =>
        {
            await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
            foreach (string sql in statements)
            {
#pragma warning disable EF1002 // the role is checked against PlainName and the table names come from the model
                await db.Database.ExecuteSqlRawAsync(sql, cancellationToken);
#pragma warning restore EF1002
            }
            await transaction.CommitAsync(cancellationToken);
        });
    }
}
