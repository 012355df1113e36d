// MSBuild task (compiled by RoslynCodeTaskFactory from Directory.Build.targets).
//
// Why: libLibTorchSharp.so from TorchSharp 0.107.0 was linked with GCC 13, which records a version
// requirement on GLIBCXX_3.4.32 for exactly one symbol, std::ios_base_library_init(). GCC 13 emits that
// symbol as a link-time marker only: no relocation refers to it, so the loader never resolves it. Debian 12's
// libstdc++ stops at GLIBCXX_3.4.30, so the loader refuses the library although nothing in it needs 3.4.32.
//
// What: in the copy in the build output only, and only when the host's libstdc++ lacks GLIBCXX_3.4.32, point
// that one Vernaux entry (.gnu.version_r) at another libstdc++ version the library already requires
// (its name offset in .dynstr and its ELF hash), after checking that the version is used by no symbol that
// any relocation refers to. The patched bytes are written to a new file that replaces the old one by rename,
// so a hard link into the NuGet cache is broken, never written through.
using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public sealed class PatchLibTorchSharpVersionNeed : Task
{
    private const uint ShtRela = 4;
    private const uint ShtRel = 9;
    private const uint ShtDynsym = 11;
    private const uint ShtGnuVerneed = 0x6ffffffe;
    private const uint ShtGnuVersym = 0x6fffffff;
    private const string NeededVersion = "GLIBCXX_3.4.32";
    private const string StdLib = "libstdc++.so.6";

    [Required]
    public ITaskItem[] Libraries { get; set; } = Array.Empty<ITaskItem>();

    /// <summary>Overrides the libstdc++ probed on the host (tests and unusual layouts).</summary>
    public string HostLibStdCxx { get; set; } = "";

    public override bool Execute()
    {
        if (Libraries.Length == 0)
        {
            return true;
        }
        string host = string.IsNullOrEmpty(HostLibStdCxx) ? FindHostLibStdCxx() : HostLibStdCxx;
        if (host == null)
        {
            Log.LogMessage(MessageImportance.High, "libLibTorchSharp patch: no host libstdc++.so.6 found; leaving the library as shipped.");
            return true;
        }
        if (ContainsAscii(File.ReadAllBytes(host), NeededVersion))
        {
            Log.LogMessage(MessageImportance.Low, "libLibTorchSharp patch: {0} provides {1}; nothing to do.", host, NeededVersion);
            return true;
        }
        foreach (ITaskItem item in Libraries)
        {
            string path = item.GetMetadata("FullPath");
            try
            {
                string outcome = PatchFile(path);
                Log.LogMessage(MessageImportance.High, "libLibTorchSharp patch: {0}: {1}", path, outcome);
            }
            catch (Exception e)
            {
                Log.LogError("libLibTorchSharp patch: {0}: {1}", path, e.Message);
            }
        }
        return !Log.HasLoggedErrors;
    }

    private static string FindHostLibStdCxx()
    {
        string[] candidates =
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        };
        return candidates.FirstOrDefault(File.Exists);
    }

    private static bool ContainsAscii(byte[] haystack, string needle)
    {
        // The task compiles against netstandard2.0: no span search, so a plain scan (runs once per build).
        byte[] n = Encoding.ASCII.GetBytes(needle + "\0");
        for (int i = 0; i + n.Length <= haystack.Length; i++)
        {
            int k = 0;
            while (k < n.Length && haystack[i + k] == n[k])
            {
                k++;
            }
            if (k == n.Length)
            {
                return true;
            }
        }
        return false;
    }

    private sealed class Section
    {
        public uint Type;
        public long Offset;
        public long Size;
        public uint Link;
        public uint Info;
        public long EntSize;
    }

    private static string PatchFile(string path)
    {
        byte[] elf = File.ReadAllBytes(path);
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != 'E' || elf[2] != 'L' || elf[3] != 'F' || elf[4] != 2 || elf[5] != 1)
        {
            throw new InvalidDataException("not a little-endian 64-bit ELF file");
        }
        long shoff = (long)BitConverter.ToUInt64(elf, 0x28);
        int shentsize = BitConverter.ToUInt16(elf, 0x3A);
        int shnum = BitConverter.ToUInt16(elf, 0x3C);
        var sections = new List<Section>();
        for (int i = 0; i < shnum; i++)
        {
            int h = checked((int)(shoff + (long)i * shentsize));
            sections.Add(new Section
            {
                Type = BitConverter.ToUInt32(elf, h + 4),
                Offset = (long)BitConverter.ToUInt64(elf, h + 24),
                Size = (long)BitConverter.ToUInt64(elf, h + 32),
                Link = BitConverter.ToUInt32(elf, h + 40),
                Info = BitConverter.ToUInt32(elf, h + 44),
                EntSize = (long)BitConverter.ToUInt64(elf, h + 56),
            });
        }
        Section verneed = sections.SingleOrDefault(s => s.Type == ShtGnuVerneed)
            ?? throw new InvalidDataException("no .gnu.version_r section");
        Section dynstr = sections[(int)verneed.Link];
        string Str(uint offset) => ReadCString(elf, dynstr.Offset + offset);

        // Walk the Verneed list to the libstdc++ entry and collect its Vernaux entries.
        long vn = verneed.Offset;
        for (uint i = 0; i < verneed.Info; i++)
        {
            ushort count = BitConverter.ToUInt16(elf, (int)vn + 2);
            uint file = BitConverter.ToUInt32(elf, (int)vn + 4);
            uint auxOffset = BitConverter.ToUInt32(elf, (int)vn + 8);
            uint next = BitConverter.ToUInt32(elf, (int)vn + 12);
            if (Str(file) == StdLib)
            {
                var aux = new List<(long At, uint Hash, ushort Index, uint Name)>();
                long a = vn + auxOffset;
                for (int k = 0; k < count; k++)
                {
                    aux.Add((a, BitConverter.ToUInt32(elf, (int)a), BitConverter.ToUInt16(elf, (int)a + 6), BitConverter.ToUInt32(elf, (int)a + 8)));
                    a += BitConverter.ToUInt32(elf, (int)a + 12);
                }
                var needed = aux.Where(x => Str(x.Name) == NeededVersion).ToList();
                if (needed.Count == 0)
                {
                    return "no " + NeededVersion + " requirement (already patched or not needed)";
                }
                var target = aux.Where(x => Str(x.Name).StartsWith("GLIBCXX_3.4.", StringComparison.Ordinal) && Str(x.Name) != NeededVersion)
                    .OrderByDescending(x => int.Parse(Str(x.Name).Substring("GLIBCXX_3.4.".Length), System.Globalization.CultureInfo.InvariantCulture))
                    .FirstOrDefault();
                if (target.Name == 0)
                {
                    throw new InvalidDataException("no other GLIBCXX version requirement to point " + NeededVersion + " at");
                }
                var symbols = SymbolsOfVersion(elf, sections, needed[0].Index);
                var relocated = RelocatedSymbols(elf, sections);
                var unsafeSymbols = symbols.Where(s => relocated.Contains(s.Index)).Select(s => s.Name).ToList();
                if (unsafeSymbols.Count > 0)
                {
                    throw new InvalidDataException("symbols of " + NeededVersion + " are used by relocations (" + string.Join(", ", unsafeSymbols) + "); refusing to patch");
                }
                Array.Copy(BitConverter.GetBytes(target.Hash), 0, elf, needed[0].At, 4);
                Array.Copy(BitConverter.GetBytes(target.Name), 0, elf, needed[0].At + 8, 4);
                ReplaceByRename(path, elf);
                return "requirement " + NeededVersion + " -> " + Str(target.Name) + " (symbols bound to it: "
                    + string.Join(", ", symbols.Select(s => s.Name)) + "; none is relocated); host libstdc++ lacks " + NeededVersion;
            }
            if (next == 0)
            {
                break;
            }
            vn += next;
        }
        return "no " + StdLib + " version requirements found";
    }

    private static List<(int Index, string Name)> SymbolsOfVersion(byte[] elf, List<Section> sections, ushort versionIndex)
    {
        Section versym = sections.Single(s => s.Type == ShtGnuVersym);
        Section dynsym = sections.Single(s => s.Type == ShtDynsym);
        Section symstr = sections[(int)dynsym.Link];
        var result = new List<(int, string)>();
        long count = dynsym.Size / 24;
        for (int i = 0; i < count; i++)
        {
            ushort v = (ushort)(BitConverter.ToUInt16(elf, (int)(versym.Offset + 2L * i)) & 0x7fff);
            if (v == versionIndex)
            {
                uint name = BitConverter.ToUInt32(elf, (int)(dynsym.Offset + 24L * i));
                result.Add((i, ReadCString(elf, symstr.Offset + name)));
            }
        }
        return result;
    }

    private static HashSet<int> RelocatedSymbols(byte[] elf, List<Section> sections)
    {
        var used = new HashSet<int>();
        foreach (Section s in sections.Where(s => s.Type == ShtRela || s.Type == ShtRel))
        {
            long entry = s.EntSize > 0 ? s.EntSize : (s.Type == ShtRela ? 24 : 16);
            for (long at = s.Offset; at + entry <= s.Offset + s.Size; at += entry)
            {
                ulong info = BitConverter.ToUInt64(elf, (int)at + 8);
                used.Add((int)(info >> 32));
            }
        }
        return used;
    }

    private static string ReadCString(byte[] bytes, long offset)
    {
        int end = Array.IndexOf(bytes, (byte)0, (int)offset);
        return Encoding.ASCII.GetString(bytes, (int)offset, end - (int)offset);
    }

    private static void ReplaceByRename(string path, byte[] bytes)
    {
        // File.Copy makes a new inode with the same mode; File.Replace renames it over the original.
        string temp = path + ".patching";
        File.Copy(path, temp, true);
        using (var stream = new FileStream(temp, FileMode.Truncate, FileAccess.Write))
        {
            stream.Write(bytes, 0, bytes.Length);
            stream.Flush(true);
        }
        File.Replace(temp, path, null);
    }
}
