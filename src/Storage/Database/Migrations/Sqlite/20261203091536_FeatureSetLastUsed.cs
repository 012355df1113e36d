using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Cluster.Storage.Database.Migrations.Sqlite
{
    /// <inheritdoc />
    public partial class FeatureSetLastUsed : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<DateTime>(
                name: "last_used_at",
                table: "feature_sets",
                type: "TEXT",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "last_used_at",
                table: "feature_sets");
        }
    }
}
