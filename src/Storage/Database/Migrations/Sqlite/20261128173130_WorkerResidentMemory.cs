using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Cluster.Storage.Database.Migrations.Sqlite
{
    /// <inheritdoc />
    public partial class WorkerResidentMemory : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<long>(
                name: "resident_bytes",
                table: "workers",
                type: "INTEGER",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "resident_bytes",
                table: "workers");
        }
    }
}
