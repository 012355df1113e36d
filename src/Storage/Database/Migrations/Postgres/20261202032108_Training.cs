using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Cluster.Storage.Database.Migrations.Postgres
{
    /// <inheritdoc />
    public partial class Training : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<int>(
                name: "best_segment",
                table: "trials",
                type: "integer",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "checkpoint",
                table: "trials",
                type: "text",
                nullable: true);

            migrationBuilder.AddColumn<DateTime>(
                name: "completed_at",
                table: "trials",
                type: "timestamp with time zone",
                nullable: true);

            migrationBuilder.AddColumn<DateTime>(
                name: "created_at",
                table: "trials",
                type: "timestamp with time zone",
                nullable: false,
                defaultValue: new DateTime(1, 1, 1, 0, 0, 0, 0, DateTimeKind.Unspecified));

            migrationBuilder.AddColumn<int>(
                name: "epoch",
                table: "trials",
                type: "integer",
                nullable: true);

            migrationBuilder.AddColumn<int>(
                name: "epochs",
                table: "trials",
                type: "integer",
                nullable: false,
                defaultValue: 0);

            migrationBuilder.AddColumn<int>(
                name: "number",
                table: "trials",
                type: "integer",
                nullable: false,
                defaultValue: 0);

            migrationBuilder.AddColumn<string>(
                name: "plan",
                table: "trials",
                type: "text",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "progress",
                table: "trials",
                type: "text",
                nullable: true);

            migrationBuilder.AddColumn<double>(
                name: "seconds",
                table: "trials",
                type: "double precision",
                nullable: false,
                defaultValue: 0.0);

            migrationBuilder.AddColumn<int>(
                name: "segment_epochs",
                table: "trials",
                type: "integer",
                nullable: false,
                defaultValue: 0);

            migrationBuilder.AddColumn<DateTime>(
                name: "started_at",
                table: "trials",
                type: "timestamp with time zone",
                nullable: true);

            migrationBuilder.AddColumn<double>(
                name: "test_accuracy",
                table: "trials",
                type: "double precision",
                nullable: true);

            migrationBuilder.AddColumn<double>(
                name: "validation_accuracy",
                table: "trials",
                type: "double precision",
                nullable: true);

            migrationBuilder.AddColumn<DateTime>(
                name: "completed_at",
                table: "segments",
                type: "timestamp with time zone",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "failure_reason",
                table: "segments",
                type: "text",
                nullable: true);

            migrationBuilder.AddColumn<int>(
                name: "last_epoch",
                table: "segments",
                type: "integer",
                nullable: true);

            migrationBuilder.AddColumn<double>(
                name: "seconds",
                table: "segments",
                type: "double precision",
                nullable: false,
                defaultValue: 0.0);

            migrationBuilder.AddColumn<bool>(
                name: "stopped_early",
                table: "segments",
                type: "boolean",
                nullable: false,
                defaultValue: false);

            migrationBuilder.AddColumn<double>(
                name: "test_accuracy",
                table: "segments",
                type: "double precision",
                nullable: true);

            migrationBuilder.AddColumn<double>(
                name: "validation_accuracy",
                table: "segments",
                type: "double precision",
                nullable: true);

            migrationBuilder.AddColumn<double>(
                name: "learning_rate",
                table: "epoch_metrics",
                type: "double precision",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "best_segment",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "checkpoint",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "completed_at",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "created_at",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "epoch",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "epochs",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "number",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "plan",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "progress",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "seconds",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "segment_epochs",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "started_at",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "test_accuracy",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "validation_accuracy",
                table: "trials");

            migrationBuilder.DropColumn(
                name: "completed_at",
                table: "segments");

            migrationBuilder.DropColumn(
                name: "failure_reason",
                table: "segments");

            migrationBuilder.DropColumn(
                name: "last_epoch",
                table: "segments");

            migrationBuilder.DropColumn(
                name: "seconds",
                table: "segments");

            migrationBuilder.DropColumn(
                name: "stopped_early",
                table: "segments");

            migrationBuilder.DropColumn(
                name: "test_accuracy",
                table: "segments");

            migrationBuilder.DropColumn(
                name: "validation_accuracy",
                table: "segments");

            migrationBuilder.DropColumn(
                name: "learning_rate",
                table: "epoch_metrics");
        }
    }
}
