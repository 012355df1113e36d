namespace Cluster.Coordinator.Search;

/// <summary>
/// What a search method asks the scheduler to do next. Methods only return operations; the scheduler records them
/// (in the same transaction as the event that caused them) and sends the commands.
/// </summary>
public abstract record SearchOperation;

/// <summary>A new trial numbered <paramref name="Trial"/>, training configuration <paramref name="Configuration"/> of the search space.</summary>
public sealed record CreateTrial(int Trial, int Configuration) : SearchOperation;

/// <summary>Train the trial until it has <paramref name="Epochs"/> epochs in all, then report its metric (<see cref="ISearchMethod.TrialReported"/>).</summary>
public sealed record TrainUntil(int Trial, int Epochs) : SearchOperation;

/// <summary>The trial trains no more: it has its full epochs, or it was not promoted. It keeps its results; retention keeps only its best checkpoint.</summary>
public sealed record CloseTrial(int Trial) : SearchOperation;

/// <summary>Nothing more will be created or trained: the sweep is complete.</summary>
public sealed record CompleteSearch : SearchOperation;
