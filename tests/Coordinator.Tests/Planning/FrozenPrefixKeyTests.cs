using System.Security.Cryptography;
using System.Text;
using Cluster.Coordinator.Planning;
using Cluster.GpuWorker.Models;
using Shouldly;

namespace Cluster.Coordinator.Tests.Planning;

public sealed class FrozenPrefixKeyTests
{
    private static FrozenPrefixKey Key(string preprocessing, string storageDtype = "fp32") =>
        new("resnet18-imagenet", "builtin:resnet18-imagenet", "avgpool", "avg", preprocessing, "fp32", "0123456789abcdef", storageDtype);

    [Fact]
    public void A_float32_set_keeps_the_key_it_had_before_the_storage_dtype_was_part_of_it()
    {
        // The formula as it was: sets extracted before stay in the cache.
        string canonical = string.Join('\n', "v1", "resnet18-imagenet", "builtin:resnet18-imagenet", "avgpool", "avg", "p", "fp32", "0123456789abcdef");
        string before = $"resnet18-imagenet.avgpool.{Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(canonical)))[..20]}";

        Key("p").Value.ShouldBe(before);
    }

    [Fact]
    public void Each_storage_dtype_has_its_own_key()
    {
        string[] keys = [Key("p", "fp32").Value, Key("p", "bf16").Value, Key("p", "fp16").Value];

        keys.Distinct().Count().ShouldBe(3);
    }

    [Fact]
    public void The_key_at_64_pixels_differs_from_the_key_at_the_native_224()
    {
        Preprocessing native = ModelCatalog.Find(BuiltInModels.ResNet18ImageNet).Preprocessing;

        string at224 = Key(native.Name).Value;
        string at64 = Key(native.AtSize(64).Name).Value;
        string at224Again = Key(native.AtSize(224).Name).Value;

        at64.ShouldNotBe(at224);
        at224Again.ShouldBe(at224, "asking for the native size is asking for the native set");
    }
}
