// Each test starts several .NET processes that load libtorch; on the 2-core CI machine more than two tests
// at a time only make each other slower.
[assembly: CollectionBehavior(MaxParallelThreads = 2)]
