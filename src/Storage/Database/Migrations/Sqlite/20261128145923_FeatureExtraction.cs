using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Cluster.Storage.Database.Migrations.Sqlite
{
    /// <inheritdoc />
    public partial class FeatureExtraction : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "failure_reason",
                table: "feature_shards",
                type: "TEXT",
                nullable: true);

            migrationBuilder.AddColumn<double>(
                name: "seconds",
                table: "feature_shards",
                type: "REAL",
                nullable: false,
                defaultValue: 0.0);

            migrationBuilder.AddColumn<string>(
                name: "status",
                table: "feature_shards",
                type: "TEXT",
                maxLength: 32,
                nullable: false,
                defaultValue: "");

            migrationBuilder.AddColumn<int>(
                name: "extracted_count",
                table: "feature_sets",
                type: "INTEGER",
                nullable: false,
                defaultValue: 0);

            migrationBuilder.AddColumn<int>(
                name: "image_count",
                table: "feature_sets",
                type: "INTEGER",
                nullable: false,
                defaultValue: 0);

            migrationBuilder.AddColumn<int>(
                name: "shard_size",
                table: "feature_sets",
                type: "INTEGER",
                nullable: false,
                defaultValue: 0);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "failure_reason",
                table: "feature_shards");

            migrationBuilder.DropColumn(
                name: "seconds",
                table: "feature_shards");

            migrationBuilder.DropColumn(
                name: "status",
                table: "feature_shards");

            migrationBuilder.DropColumn(
                name: "extracted_count",
                table: "feature_sets");

            migrationBuilder.DropColumn(
                name: "image_count",
                table: "feature_sets");

            migrationBuilder.DropColumn(
                name: "shard_size",
                table: "feature_sets");
        }
    }
}
