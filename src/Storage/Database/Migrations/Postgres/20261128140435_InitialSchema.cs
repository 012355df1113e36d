using System;
using Microsoft.EntityFrameworkCore.Migrations;
using Npgsql.EntityFrameworkCore.PostgreSQL.Metadata;

#nullable disable

namespace Cluster.Storage.Database.Migrations.Postgres
{
    /// <inheritdoc />
    public partial class InitialSchema : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.CreateTable(
                name: "datasets",
                columns: table => new
                {
                    id = table.Column<string>(type: "text", nullable: false),
                    root = table.Column<string>(type: "text", nullable: false),
                    manifest_path = table.Column<string>(type: "text", nullable: false),
                    content_hash = table.Column<string>(type: "text", nullable: false),
                    image_count = table.Column<int>(type: "integer", nullable: false),
                    class_count = table.Column<int>(type: "integer", nullable: false),
                    created_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_datasets", x => x.id);
                });

            migrationBuilder.CreateTable(
                name: "epoch_metrics",
                columns: table => new
                {
                    id = table.Column<long>(type: "bigint", nullable: false)
                        .Annotation("Npgsql:ValueGenerationStrategy", NpgsqlValueGenerationStrategy.IdentityByDefaultColumn),
                    trial_id = table.Column<Guid>(type: "uuid", nullable: false),
                    epoch = table.Column<int>(type: "integer", nullable: false),
                    split = table.Column<string>(type: "character varying(32)", maxLength: 32, nullable: false),
                    loss = table.Column<double>(type: "double precision", nullable: false),
                    accuracy = table.Column<double>(type: "double precision", nullable: false),
                    images_per_second = table.Column<double>(type: "double precision", nullable: false),
                    seconds = table.Column<double>(type: "double precision", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_epoch_metrics", x => x.id);
                });

            migrationBuilder.CreateTable(
                name: "feature_sets",
                columns: table => new
                {
                    key = table.Column<string>(type: "text", nullable: false),
                    model = table.Column<string>(type: "text", nullable: false),
                    weights_hash = table.Column<string>(type: "text", nullable: false),
                    layer = table.Column<string>(type: "text", nullable: false),
                    pooling = table.Column<string>(type: "text", nullable: false),
                    preprocessing = table.Column<string>(type: "text", nullable: false),
                    dataset_id = table.Column<string>(type: "text", nullable: false),
                    dtype = table.Column<string>(type: "text", nullable: false),
                    shape = table.Column<string>(type: "text", nullable: false),
                    status = table.Column<string>(type: "character varying(32)", maxLength: 32, nullable: false),
                    shard_count = table.Column<int>(type: "integer", nullable: false),
                    created_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: false),
                    completed_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: true)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_feature_sets", x => x.key);
                });

            migrationBuilder.CreateTable(
                name: "feature_shards",
                columns: table => new
                {
                    feature_set_key = table.Column<string>(type: "text", nullable: false),
                    index = table.Column<int>(type: "integer", nullable: false),
                    row_start = table.Column<long>(type: "bigint", nullable: false),
                    row_count = table.Column<int>(type: "integer", nullable: false),
                    path = table.Column<string>(type: "text", nullable: false),
                    sha256 = table.Column<string>(type: "text", nullable: false),
                    image_count = table.Column<int>(type: "integer", nullable: false),
                    skipped_count = table.Column<int>(type: "integer", nullable: false),
                    worker_id = table.Column<string>(type: "text", nullable: true),
                    created_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_feature_shards", x => new { x.feature_set_key, x.index });
                });

            migrationBuilder.CreateTable(
                name: "segments",
                columns: table => new
                {
                    trial_id = table.Column<Guid>(type: "uuid", nullable: false),
                    index = table.Column<int>(type: "integer", nullable: false),
                    epoch_from = table.Column<int>(type: "integer", nullable: false),
                    epoch_to = table.Column<int>(type: "integer", nullable: false),
                    checkpoint_path = table.Column<string>(type: "text", nullable: true),
                    sha256 = table.Column<string>(type: "text", nullable: true),
                    worker_id = table.Column<string>(type: "text", nullable: true),
                    status = table.Column<string>(type: "character varying(32)", maxLength: 32, nullable: false),
                    attempts = table.Column<int>(type: "integer", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_segments", x => new { x.trial_id, x.index });
                });

            migrationBuilder.CreateTable(
                name: "selftest_runs",
                columns: table => new
                {
                    job_id = table.Column<Guid>(type: "uuid", nullable: false),
                    worker_id = table.Column<string>(type: "text", nullable: false),
                    device = table.Column<string>(type: "text", nullable: false),
                    torch_version = table.Column<string>(type: "text", nullable: false),
                    output_shape = table.Column<string>(type: "text", nullable: false),
                    checksum = table.Column<double>(type: "double precision", nullable: false),
                    milliseconds = table.Column<double>(type: "double precision", nullable: false),
                    completed_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_selftest_runs", x => x.job_id);
                });

            migrationBuilder.CreateTable(
                name: "skipped_images",
                columns: table => new
                {
                    id = table.Column<long>(type: "bigint", nullable: false)
                        .Annotation("Npgsql:ValueGenerationStrategy", NpgsqlValueGenerationStrategy.IdentityByDefaultColumn),
                    dataset_id = table.Column<string>(type: "text", nullable: false),
                    path = table.Column<string>(type: "text", nullable: false),
                    reason = table.Column<string>(type: "text", nullable: false),
                    recorded_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_skipped_images", x => x.id);
                });

            migrationBuilder.CreateTable(
                name: "sweeps",
                columns: table => new
                {
                    id = table.Column<Guid>(type: "uuid", nullable: false),
                    name = table.Column<string>(type: "text", nullable: false),
                    spec_text = table.Column<string>(type: "text", nullable: false),
                    spec_hash = table.Column<string>(type: "text", nullable: false),
                    status = table.Column<string>(type: "character varying(32)", maxLength: 32, nullable: false),
                    created_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: false),
                    started_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: true),
                    completed_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: true)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_sweeps", x => x.id);
                });

            migrationBuilder.CreateTable(
                name: "trials",
                columns: table => new
                {
                    id = table.Column<Guid>(type: "uuid", nullable: false),
                    sweep_id = table.Column<Guid>(type: "uuid", nullable: false),
                    hyperparameters = table.Column<string>(type: "jsonb", nullable: false),
                    strategy = table.Column<string>(type: "text", nullable: false),
                    prefix_key = table.Column<string>(type: "text", nullable: true),
                    status = table.Column<string>(type: "character varying(32)", maxLength: 32, nullable: false),
                    rung = table.Column<int>(type: "integer", nullable: false),
                    best_metric = table.Column<double>(type: "double precision", nullable: true),
                    attempts = table.Column<int>(type: "integer", nullable: false),
                    failure_reason = table.Column<string>(type: "text", nullable: true)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_trials", x => x.id);
                });

            migrationBuilder.CreateTable(
                name: "workers",
                columns: table => new
                {
                    id = table.Column<string>(type: "text", nullable: false),
                    host = table.Column<string>(type: "text", nullable: false),
                    device = table.Column<string>(type: "text", nullable: false),
                    version = table.Column<string>(type: "text", nullable: false),
                    status = table.Column<string>(type: "character varying(32)", maxLength: 32, nullable: false),
                    started_at = table.Column<DateTime>(type: "timestamp with time zone", nullable: false),
                    last_heartbeat = table.Column<DateTime>(type: "timestamp with time zone", nullable: false),
                    current_job = table.Column<string>(type: "text", nullable: true),
                    images_per_second = table.Column<double>(type: "double precision", nullable: true)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_workers", x => x.id);
                });

            migrationBuilder.CreateIndex(
                name: "ix_epoch_metrics_trial_id_epoch_split",
                table: "epoch_metrics",
                columns: new[] { "trial_id", "epoch", "split" },
                unique: true);

            migrationBuilder.CreateIndex(
                name: "ix_feature_sets_dataset_id",
                table: "feature_sets",
                column: "dataset_id");

            migrationBuilder.CreateIndex(
                name: "ix_feature_sets_status",
                table: "feature_sets",
                column: "status");

            migrationBuilder.CreateIndex(
                name: "ix_segments_status",
                table: "segments",
                column: "status");

            migrationBuilder.CreateIndex(
                name: "ix_skipped_images_dataset_id_path",
                table: "skipped_images",
                columns: new[] { "dataset_id", "path" },
                unique: true);

            migrationBuilder.CreateIndex(
                name: "ix_sweeps_created_at",
                table: "sweeps",
                column: "created_at");

            migrationBuilder.CreateIndex(
                name: "ix_sweeps_status",
                table: "sweeps",
                column: "status");

            migrationBuilder.CreateIndex(
                name: "ix_trials_prefix_key",
                table: "trials",
                column: "prefix_key");

            migrationBuilder.CreateIndex(
                name: "ix_trials_sweep_id_status",
                table: "trials",
                columns: new[] { "sweep_id", "status" });

            migrationBuilder.CreateIndex(
                name: "ix_workers_last_heartbeat",
                table: "workers",
                column: "last_heartbeat");
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropTable(
                name: "datasets");

            migrationBuilder.DropTable(
                name: "epoch_metrics");

            migrationBuilder.DropTable(
                name: "feature_sets");

            migrationBuilder.DropTable(
                name: "feature_shards");

            migrationBuilder.DropTable(
                name: "segments");

            migrationBuilder.DropTable(
                name: "selftest_runs");

            migrationBuilder.DropTable(
                name: "skipped_images");

            migrationBuilder.DropTable(
                name: "sweeps");

            migrationBuilder.DropTable(
                name: "trials");

            migrationBuilder.DropTable(
                name: "workers");
        }
    }
}
