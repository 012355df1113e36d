namespace Cluster.GpuWorker.Models;

/// <summary>
/// The names users write for the values of an enum (a head, an optimizer), and the one parser of them: an unknown
/// name is an <see cref="UnknownNameException"/> listing the valid ones, closest first.
/// </summary>
public sealed class NameTable<T>(string kind, string where, IReadOnlyDictionary<string, T> names)
    where T : struct, Enum
{
    public IReadOnlyCollection<string> Names => names.Keys.ToArray();

    public T Parse(string name) =>
        names.TryGetValue(name, out T value) ? value : throw new UnknownNameException(kind, name, where, names.Keys);

    public string NameOf(T value) => names.First(p => EqualityComparer<T>.Default.Equals(p.Value, value)).Key;
}
