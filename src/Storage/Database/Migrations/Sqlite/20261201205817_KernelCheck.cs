using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Cluster.Storage.Database.Migrations.Sqlite
{
    /// <inheritdoc />
    public partial class KernelCheck : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "kernel_check",
                table: "workers",
                type: "TEXT",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "kernel_check",
                table: "selftest_runs",
                type: "TEXT",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "kernel_check",
                table: "workers");

            migrationBuilder.DropColumn(
                name: "kernel_check",
                table: "selftest_runs");
        }
    }
}
