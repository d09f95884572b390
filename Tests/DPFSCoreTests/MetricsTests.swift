import DPFSCore
import DPFSPosix
import DPFSTestSupport
import EngineMetrics
import FUSEWire
import Glibc
import NullBackend
import Testing

/// What `/metrics` shows: the poller's own counts of a known sequence of requests, and the text
/// format Prometheus reads (escaping, cumulative buckets, `_sum`/`_count`).
@Suite struct MetricsTests {
    @Test("the poller counts requests, errors by opcode and errno, bytes, and latency by class")
    func pollerCounts() {
        let rig = TestRig(backend: NullBackend(configuration: NullBackendConfiguration(fileSizeBytes: 10_000)))
        rig.establishSession()
        rig.rig.poller.resetMeasurements()
        for _ in 0..<3 {
            #expect(rig.roundTrip(TestRequest.valid(.read).bytes, writableBytes: 16 + 4096, segmentation: .linux(payloadOffset: 80)).error == 0)
        }
        var tail = TestRequest.valid(.read)
        tail.args.replaceSubrange(8..<16, with: le(UInt64(9_000)))     // 1 000 bytes left
        #expect(rig.roundTrip(tail.bytes, writableBytes: 16 + 4096).usedLength == 16 + 1000)
        #expect(rig.roundTrip(TestRequest.valid(.write).bytes, writableBytes: 24, segmentation: .linux(payloadOffset: 80)).error == 0)
        for _ in 0..<2 {
            #expect(rig.roundTrip(TestRequest(.lookup, nodeID: 1, args: Array("nope".utf8) + [0]).bytes, writableBytes: 144).error == -2)
        }
        #expect(rig.roundTrip(TestRequest.valid(.forget).bytes, writableBytes: 0).usedLength == 0)

        let counters = rig.rig.poller.counters
        let metrics = counters.metrics.pointee
        #expect(metrics.bytesRead == 3 * 4096 + 1000)
        #expect(metrics.bytesWritten == UInt64(TestRequest.writePayload.count))
        #expect(metrics.errorReplies == 2 && metrics.repliesSent == 7 && metrics.oneWayRequests == 1)
        #expect(counters.opcodeRequests[Int(FUSEOpcode.read.rawValue)] == 4)
        #expect(counters.opcodeErrors[Int(FUSEOpcode.lookup.rawValue)] == 2)
        #expect(counters.opcodeErrors[Int(FUSEOpcode.read.rawValue)] == 0)
        #expect(counters.errnoErrors[Int(ENOENT)] == 2)
        #expect(counters.classHistogram(.read).total == 4)
        #expect(counters.classHistogram(.metadata).total == 2)
        #expect(counters.classHistogram(.write).total == 1)
        #expect(counters.classHistogram(.other).total == 1)                // FORGET
        #expect(metrics.slotsInUse == 0)

        let scrape = QueueScrape(queue: 0, slots: 16, counters: counters, cyclesPerSecond: 1e9)
        #expect(scrape.metrics.bytesRead == metrics.bytesRead)
        #expect(scrape.classLatency[Int(OpcodeClass.read.rawValue)].count == 4)
        #expect(scrape.errnoErrors[Int(ENOENT)] == 2)
    }

    @Test("a request the backend holds shows in slots_in_use until it is published")
    func slotsInUse() throws {
        let state = ScriptedBackend.State()
        let rig = TestRig(backend: ScriptedBackend(state: state))
        rig.establishSession()
        for unique: UInt64 in [501, 502] {
            var request = TestRequest.valid(.getattr)
            request.unique = unique
            state.plans[unique] = .pending
            rig.submit(request.bytes, writableBytes: 120)
        }
        #expect(rig.stepAndReap().isEmpty)
        #expect(rig.metrics.slotsInUse == 2)
        let first = try #require(state.pending.first)
        ScriptedBackend.writeSuccess(first.reply, unique: first.unique)
        _ = rig.rig.poller.completions.push(first.token)
        #expect(rig.stepAndReap().count == 1)
        #expect(rig.metrics.slotsInUse == 1)
        #expect(rig.metrics.pendingRequests == 2)
    }

    @Test("every opcode has a class, and only the data opcodes are read or write")
    func opcodeClasses() {
        #expect(OpcodeClass.of(FUSEOpcode.read.rawValue) == .read)
        #expect(OpcodeClass.of(FUSEOpcode.write.rawValue) == .write)
        #expect(OpcodeClass.of(FUSEOpcode.fsync.rawValue) == .sync)
        #expect(OpcodeClass.of(FUSEOpcode.readdirplus.rawValue) == .directory)
        #expect(OpcodeClass.of(FUSEOpcode.rename2.rawValue) == .namespace)
        #expect(OpcodeClass.of(4096) == .other)
        for opcode in FUSEOpcode.allCases where opcode != .read && opcode != .write {
            #expect(![OpcodeClass.read, .write].contains(OpcodeClass.of(opcode.rawValue)), "\(opcode)")
        }
    }

    @Test("coarse buckets never report a request faster than it was")
    func coarseFolding() {
        let counts = UnsafeMutablePointer<UInt64>.allocate(capacity: LatencyHistogram.bucketCount)
        defer { counts.deallocate() }
        counts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
        let fine = LatencyHistogram(counts: counts)
        // At 1 cycle per nanosecond: 999 ns, 1 000 ns, 1 001 ns, 30 µs and 20 s.
        for value: UInt64 in [999, 1_000, 1_001, 30_000, 20_000_000_000] { fine.record(value) }
        var coarse = CoarseHistogram()
        coarse.add(fine, cyclesTotal: 20_000_033_000, cyclesPerSecond: 1e9)
        let le1us = latencyBoundariesSeconds.firstIndex(of: 0.000_001)!
        let le50us = latencyBoundariesSeconds.firstIndex(of: 0.000_05)!
        // 999 shares its fine bucket with values up to 1 007: it may not count as ≤ 1 µs.
        #expect(coarse.counts[le1us] == 0)
        #expect(coarse.counts[le1us + 1] == 3)            // ≤ 2.5 µs
        #expect(coarse.counts[le50us] == 1)
        #expect(coarse.counts.last == 1)                  // +Inf
        #expect(coarse.count == 5)
        #expect(abs(coarse.sumSeconds - 20.000033) < 1e-9)
    }

    @Test("the text format: HELP and TYPE once per family, escaped labels, cumulative buckets")
    func textFormat() {
        var queue = QueueScrape(queue: 0, slots: 256)
        queue.metrics.bytesRead = 4096
        queue.opcodeRequests[Int(FUSEOpcode.read.rawValue)] = 1
        queue.errnoErrors[Int(ENOENT)] = 3
        queue.classLatency[Int(OpcodeClass.read.rawValue)] = CoarseHistogram(
            counts: [0, 0, 1, 2] + Array(repeating: 0, count: latencyBoundariesSeconds.count - 3), sumSeconds: 0.000_02)
        let device = DeviceScrape(name: "a\"b\\c\nd", transport: "vhost-user", backend: "kv", queues: [queue],
                                  backendCounters: [BackendCounter(name: "reconnects", help: "Reconnects.", value: 7)])
        let text = PrometheusText.render([device])
        let lines = text.split(separator: "\n").map(String.init)
        let label = #"device="a\"b\\c\nd""#
        #expect(lines.contains("dpfs_read_bytes_total{\(label),queue=\"0\"} 4096"))
        #expect(lines.contains("dpfs_opcode_requests_total{\(label),queue=\"0\",opcode=\"READ\"} 1"))
        #expect(lines.contains("dpfs_errno_errors_total{\(label),errno=\"ENOENT\"} 3"))
        #expect(lines.contains("dpfs_request_duration_seconds_bucket{\(label),class=\"read\",le=\"5e-06\"} 1"))
        #expect(lines.contains("dpfs_request_duration_seconds_bucket{\(label),class=\"read\",le=\"1e-05\"} 3"))
        #expect(lines.contains("dpfs_request_duration_seconds_bucket{\(label),class=\"read\",le=\"+Inf\"} 3"))
        #expect(lines.contains("dpfs_request_duration_seconds_count{\(label),class=\"read\"} 3"))
        #expect(lines.contains("dpfs_backend_reconnects_total{\(label),backend=\"kv\"} 7"))
        #expect(lines.contains("dpfs_slots{\(label),queue=\"0\"} 256"))
        // Classes never seen are left out rather than shown as empty histograms.
        #expect(!text.contains("class=\"write\""))
        for family in lines where family.hasPrefix("# TYPE ") {
            #expect(lines.filter { $0 == family }.count == 1, "\(family)")
            let parts = family.split(separator: " ")
            if parts[3] == "counter" { #expect(parts[2].hasSuffix("_total"), "\(family)") }
        }
    }
}
