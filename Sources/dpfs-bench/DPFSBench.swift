import ArgumentParser

@main
struct DPFSBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dpfs-bench",
        abstract: "Benchmarks for the DPFS engine. Speed targets live here, not in timed unit tests.",
        subcommands: [CoreBenchmark.self, VhostUserBenchmark.self, MetadataBenchmark.self, AllocationGateCommand.self, NFSFloorBenchmark.self, NFSv4Probe.self, CostCommand.self])
}
