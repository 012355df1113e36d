using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Cluster.Storage.Database.Migrations.Postgres
{
    /// <inheritdoc />
    public partial class Sweeps : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<int>(
                name: "completed_segments",
                table: "trials",
                type: "integer",
                nullable: false,
                defaultValue: 0);

            migrationBuilder.AddColumn<DateTime>(
                name: "dispatched_at",
                table: "trials",
                type: "timestamp with time zone",
                nullable: true);

            migrationBuilder.AddColumn<int>(
                name: "dispatched_segment",
                table: "trials",
                type: "integer",
                nullable: true);

            migrationBuilder.AddColumn<bool>(
                name: "stopped_early",
                table: "trials",
                type: "boolean",
                nullable: false,
                defaultValue: false);

            migrationBuilder.AddColumn<int>(
                name: "target_epochs",
                table: "trials",
                type: "integer",
                nullable: false,
                defaultValue: 0);

            migrationBuilder.AddColumn<double>(
                name: "validation_loss",
                table: "trials",
                type: "double precision",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "worker_id",
                table: "trials",
                type: "text",
                nullable: true);

            migrationBuilder.AddColumn<DateTime>(
                name: "deadline",
                table: "sweeps",
                type: "timestamp with time zone",
                nullable: true);

            migrationBuilder.AddColumn<int>(
                name: "max_attempts",
                table: "sweeps",
                type: "integer",
                nullable: false,
                defaultValue: 3);

            migrationBuilder.AddColumn<string>(
                name: "search",
                table: "sweeps",
                type: "text",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "search_state",
                table: "sweeps",
                type: "text",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "stop_reason",
                table: "sweeps",
                type: "text",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "request",
                table: "feature_sets",
                type: "text",
                nullable: true);

            migrationBuilder.CreateIndex(
                name: "ix_trials_sweep_id_number",
                table: "trials",
                columns: new[] { "sweep_id", "number" },
                unique: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropIndex(
                name: "ix_trials_sweep_id_number",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "completed_segments",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "dispatched_at",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "dispatched_segment",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "stopped_early",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "target_epochs",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "validation_loss",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "worker_id",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "deadline",
                table: "sweeps");

            migrationBuilder.DropColumn(
                name: "max_attempts",
                table: "sweeps");

            migrationBuilder.DropColumn(
                name: "search",
                table: "sweeps");

            migrationBuilder.DropColumn(
                name: "search_state",
                table: "sweeps");

            migrationBuilder.DropColumn(
                name: "stop_reason",
                table: "sweeps");

            migrationBuilder.DropColumn(
                name: "request",
                table: "feature_sets");
        }
    }
}
