using System.Buffers.Binary;
using Cluster.Storage.Files;
using Cluster.Storage.TensorBoard;
using Google.Protobuf;
using Shouldly;

namespace Cluster.Storage.Tests.TensorBoard;

public sealed class TensorBoardWriterTests : IDisposable
{
    private static readonly DateTimeOffset Start = new(2026, 12, 2, 3, 0, 0, TimeSpan.Zero);

    private readonly string _root = Path.Combine(Path.GetTempPath(), "tensorboard-tests-" + Guid.NewGuid().ToString("N"));
    private readonly string _folder;

    public TensorBoardWriterTests()
    {
        _folder = Path.Combine(_root, "tensorboard", "sweep-1", "trial-7");
    }

    public void Dispose()
    {
        if (Directory.Exists(_root))
        {
            Directory.Delete(_root, recursive: true);
        }
    }

    [Fact]
    public void Crc32C_of_the_standard_check_string_is_E3069283()
    {
        Crc32C.Compute("123456789"u8).ShouldBe(0xE3069283u);
    }

    [Fact]
    public void Crc32C_of_32_zero_bytes_is_8A9136AA()
    {
        Crc32C.Compute(new byte[32]).ShouldBe(0x8A9136AAu);
    }

    [Fact]
    public void A_written_file_reads_back_its_scalars()
    {
        using (var writer = new TensorBoardWriter(_folder, new FixedTime(Start)))
        {
            writer.Scalar("loss/train", 1, 0.75);
            writer.Scalar("accuracy/validation", 1, 0.5);
            writer.Flush();
            writer.Scalar("loss/train", 2, 0.25);
            writer.Scalar("loss/train", -1, 1e30);
            writer.Scalar("ünïcode tag", long.MaxValue, -3.5);
        }

        TensorBoardWriter.ReadScalars(_folder).ShouldBe(
        [
            ("loss/train", 1L, 0.75),
            ("accuracy/validation", 1L, 0.5),
            ("loss/train", 2L, 0.25),
            ("loss/train", -1L, (double)1e30f),
            ("ünïcode tag", long.MaxValue, -3.5),
        ]);
        var file = Path.GetFileName(Directory.GetFiles(_folder).ShouldHaveSingleItem());
        file.ShouldStartWith($"events.out.tfevents.{Start.ToUnixTimeSeconds()}.");
    }

    [Fact]
    public void The_first_record_is_the_file_version_event()
    {
        string path;
        using (var writer = new TensorBoardWriter(_folder, new FixedTime(Start)))
        {
            writer.Scalar("loss", 0, 1.0);
            writer.Flush();
            path = writer.FilePath.ShouldNotBeNull();
        }

        var records = Records(File.ReadAllBytes(path));
        records.Count.ShouldBe(2);
        var first = DecodeEvent(records[0]);
        first.FileVersion.ShouldBe("brain.Event:2");
        first.WallTime.ShouldBe(Start.ToUnixTimeSeconds());
        first.Values.ShouldBeEmpty();
        var second = DecodeEvent(records[1]);
        second.FileVersion.ShouldBeNull();
        second.Values.ShouldBe([("loss", 1.0f)]);
    }

    [Fact]
    public void A_scalar_record_is_the_bytes_the_format_spells_out()
    {
        string path;
        using (var writer = new TensorBoardWriter(_folder))
        {
            writer.Scalar("loss", 3, 0.5, DateTime.UnixEpoch.AddSeconds(1));
            writer.Flush();
            path = writer.FilePath.ShouldNotBeNull();
        }

        // Worked out by hand from the Event schema. Event: wall_time (field 1, fixed64) 1.0; step (field 2,
        // varint) 3; summary (field 5, 13 bytes) holding one value (field 1, 11 bytes): tag (field 1) "loss",
        // simple_value (field 2, fixed32) 0.5f.
        byte[] data =
        [
            0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xF0, 0x3F,
            0x10, 0x03,
            0x2A, 0x0D,
            0x0A, 0x0B,
            0x0A, 0x04, (byte)'l', (byte)'o', (byte)'s', (byte)'s',
            0x15, 0x00, 0x00, 0x00, 0x3F,
        ];

        // Framing: uint64 length 26, then masked CRC-32Cs of the length and of the data (computed with a bitwise
        // CRC-32C outside this project: ((crc >> 15) | (crc << 17)) + 0xa282ead8).
        byte[] expected =
        [
            0x1A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x12, 0x9B, 0xD8, 0x2D,
            .. data,
            0x7F, 0xB8, 0x43, 0x77,
        ];
        var bytes = File.ReadAllBytes(path);
        var firstLength = 12 + (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes) + 4;
        bytes[firstLength..].ShouldBe(expected);

        var decoded = DecodeEvent(data);
        decoded.WallTime.ShouldBe(1.0);
        decoded.Step.ShouldBe(3);
        decoded.Values.ShouldBe([("loss", 0.5f)]);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(30)]
    [InlineData(41)]
    public void A_torn_last_record_is_skipped_and_the_records_before_it_are_read(int bytesCut)
    {
        string path;
        using (var writer = new TensorBoardWriter(_folder))
        {
            writer.Scalar("loss", 1, 0.5);
            writer.Scalar("loss", 2, 0.25);
            writer.Flush();
            writer.Scalar("loss", 3, 0.125);
            writer.Flush();
            path = writer.FilePath.ShouldNotBeNull();
        }

        // Each "loss" record is 42 bytes, so every cut ends the file inside the last one.
        using (var file = new FileStream(path, FileMode.Open, FileAccess.Write))
        {
            file.SetLength(file.Length - bytesCut);
        }

        TensorBoardWriter.ReadScalars(_folder).ShouldBe([("loss", 1L, 0.5), ("loss", 2L, 0.25)]);
    }

    [Theory]
    [InlineData(0, "length CRC-32C")]
    [InlineData(8, "length CRC-32C")]
    [InlineData(12, "data CRC-32C")]
    [InlineData(20, "data CRC-32C")]
    [InlineData(38, "data CRC-32C")]
    public void A_flipped_byte_in_a_record_is_detected(int byteInRecord, string problem)
    {
        string path;
        using (var writer = new TensorBoardWriter(_folder))
        {
            writer.Scalar("loss", 1, 0.5);
            writer.Scalar("loss", 2, 0.25);
            writer.Flush();
            path = writer.FilePath.ShouldNotBeNull();
        }

        var bytes = File.ReadAllBytes(path);
        var second = 12 + (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes) + 4 + 42;
        bytes[second + byteInRecord] ^= 0x10;
        File.WriteAllBytes(path, bytes);

        var error = Should.Throw<TensorBoardFormatException>(() => TensorBoardWriter.ReadScalars(_folder));
        error.FileName.ShouldBe(Path.GetFileName(path));
        error.Offset.ShouldBe(second);
        error.Problem.ShouldStartWith(problem);
        error.Message.ShouldStartWith($"{Path.GetFileName(path)}: record at byte {second}: ");
    }

    [Fact]
    public void A_resumed_trial_adds_a_new_file_and_both_are_read()
    {
        string first;
        using (var writer = new TensorBoardWriter(_folder, new FixedTime(Start)))
        {
            writer.Scalar("loss", 1, 0.5);
            writer.Flush();
            first = writer.FilePath.ShouldNotBeNull();
        }

        var firstBytes = File.ReadAllBytes(first);
        string second;
        using (var writer = new TensorBoardWriter(_folder, new FixedTime(Start.AddMinutes(5))))
        {
            writer.Scalar("loss", 2, 0.25);
            writer.Flush();
            second = writer.FilePath.ShouldNotBeNull();
        }

        second.ShouldNotBe(first);
        File.ReadAllBytes(first).ShouldBe(firstBytes);
        TensorBoardWriter.ReadScalars(_folder).ShouldBe([("loss", 1L, 0.5), ("loss", 2L, 0.25)]);
    }

    [Fact]
    public void A_writer_that_is_given_no_scalars_creates_no_file()
    {
        using (var writer = new TensorBoardWriter(_folder))
        {
            writer.Flush();
            writer.FilePath.ShouldBeNull();
        }

        Directory.Exists(_folder).ShouldBeFalse();
        TensorBoardWriter.ReadScalars(_folder).ShouldBeEmpty();
    }

    [Fact]
    public void A_storage_relative_folder_is_resolved_inside_the_root()
    {
        var files = new FileStore(_root);
        using (var writer = new TensorBoardWriter(files, "tensorboard/sweep-1/trial-7"))
        {
            writer.Scalar("loss", 1, 0.5);
        }

        TensorBoardWriter.ReadScalars(files, "tensorboard/sweep-1/trial-7").ShouldBe([("loss", 1L, 0.5)]);
        Should.Throw<StoragePathException>(() => new TensorBoardWriter(files, "tensorboard/../../elsewhere"));
    }

    // The records of an event file, framed by hand so the test does not lean on the reader it checks.
    private static List<byte[]> Records(byte[] file)
    {
        var records = new List<byte[]>();
        var offset = 0;
        while (offset < file.Length)
        {
            var length = (int)BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(offset));
            records.Add(file[(offset + 12)..(offset + 12 + length)]);
            offset += 12 + length + 4;
        }

        return records;
    }

    private static DecodedEvent DecodeEvent(byte[] data)
    {
        var decoded = new DecodedEvent();
        var input = new CodedInputStream(data);
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 1:
                    decoded.WallTime = input.ReadDouble();
                    break;
                case 2:
                    decoded.Step = input.ReadInt64();
                    break;
                case 3:
                    decoded.FileVersion = input.ReadString();
                    break;
                case 5:
                    DecodeSummary(input.ReadBytes(), decoded.Values);
                    break;
                default:
                    throw new InvalidDataException($"unexpected Event field {WireFormat.GetTagFieldNumber(tag)}");
            }
        }

        return decoded;
    }

    private static void DecodeSummary(ByteString summary, List<(string Tag, float Value)> values)
    {
        var input = summary.CreateCodedInput();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            WireFormat.GetTagFieldNumber(tag).ShouldBe(1);
            var value = input.ReadBytes().CreateCodedInput();
            var name = "";
            var simpleValue = float.NaN;
            uint valueTag;
            while ((valueTag = value.ReadTag()) != 0)
            {
                switch (WireFormat.GetTagFieldNumber(valueTag))
                {
                    case 1:
                        name = value.ReadString();
                        break;
                    case 2:
                        WireFormat.GetTagWireType(valueTag).ShouldBe(WireFormat.WireType.Fixed32);
                        simpleValue = value.ReadFloat();
                        break;
                    default:
                        throw new InvalidDataException($"unexpected Value field {WireFormat.GetTagFieldNumber(valueTag)}");
                }
            }

            values.Add((name, simpleValue));
        }
    }

    private sealed class DecodedEvent
    {
        public double WallTime { get; set; }

        public long Step { get; set; }

        public string? FileVersion { get; set; }

        public List<(string Tag, float Value)> Values { get; } = [];
    }

    private sealed class FixedTime(DateTimeOffset now) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => now;
    }
}
