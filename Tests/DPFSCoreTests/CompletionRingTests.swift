import DPFSCore
import DPFSPosix
import Synchronization
import Testing

@Suite struct CompletionRingTests {
    static func makeRing(capacity: Int) -> (CompletionRing, UnsafeMutableRawPointer) {
        var plan = ArenaPlan()
        CompletionRing.plan(&plan, capacity: capacity)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: plan.bytes + 64, alignment: 64)
        var arena = ArenaAllocator(base: memory, capacityBytes: plan.bytes + 64)
        return (CompletionRing(capacity: capacity, arena: &arena), memory)
    }

    @Test("tokens come out in the order they went in, across many wrap-arounds")
    func fifoAcrossWraps() {
        let (ring, memory) = Self.makeRing(capacity: 8)
        defer { memory.deallocate() }
        var next: UInt32 = 0
        var expected: UInt32 = 0
        for round in 0..<1000 {
            let burst = round % 9
            for _ in 0..<burst where ring.push(CompletionToken(slotIndex: next, generation: next &* 3)) { next += 1 }
            while let token = ring.pop() {
                #expect(token.slotIndex == expected && token.generation == expected &* 3)
                expected += 1
            }
        }
        #expect(expected == next && next > 3000)
    }

    @Test("a full ring refuses a push and overwrites nothing")
    func fullRingRefuses() {
        let (ring, memory) = Self.makeRing(capacity: 4)
        defer { memory.deallocate() }
        for index in 0..<4 { #expect(ring.push(CompletionToken(slotIndex: UInt32(index), generation: 0))) }
        #expect(!ring.push(CompletionToken(slotIndex: 99, generation: 0)))
        for index in 0..<4 { #expect(ring.pop()?.slotIndex == UInt32(index)) }
        #expect(ring.pop() == nil)
    }

    /// Several producer threads and one consumer: every token arrives exactly once. This is the
    /// test the ThreadSanitizer job runs (`swift test --sanitize=thread --filter Concurrency`).
    @Test("Concurrency: four producers, one consumer, every token exactly once")
    func concurrentProducers() throws {
        let (ring, memory) = Self.makeRing(capacity: 64)
        defer { memory.deallocate() }
        let producers = 4
        let perProducer = 20_000
        let threads = try (0..<producers).map { producer in
            try PinnedThread {
                for sequence in 0..<perProducer {
                    let token = CompletionToken(slotIndex: UInt32(sequence), generation: UInt32(producer))
                    while !ring.push(token) { spinHint() }
                }
            }
        }
        var seen = [[Bool]](repeating: [Bool](repeating: false, count: perProducer), count: producers)
        var lastPerProducer = [Int](repeating: -1, count: producers)
        var received = 0
        while received < producers * perProducer {
            guard let token = ring.pop() else { spinHint(); continue }
            let producer = Int(token.generation), sequence = Int(token.slotIndex)
            #expect(!seen[producer][sequence], "token delivered twice")
            seen[producer][sequence] = true
            // Each producer's tokens stay in its own order.
            #expect(sequence > lastPerProducer[producer])
            lastPerProducer[producer] = sequence
            received += 1
        }
        threads.forEach { $0.join() }
        #expect(ring.pop() == nil)
        #expect(seen.allSatisfy { $0.allSatisfy { $0 } })
    }
}

@Suite struct LatencyHistogramTests {
    @Test("buckets are monotonic and within 1/32 of the value")
    func bucketPrecision() {
        var previous = -1
        for value in [UInt64(0), 1, 7, 8, 9, 15, 16, 31, 32, 33, 63, 64, 100, 1000, 12345, 1 << 20, 1 << 40, UInt64.max] {
            let bucket = LatencyHistogram.bucket(of: value)
            #expect(bucket >= previous)
            previous = bucket
            let lower = LatencyHistogram.lowerBound(ofBucket: bucket)
            #expect(lower <= value)
            if value >= 32 { #expect(Double(value - lower) <= Double(value) / 32) } else { #expect(lower == value) }
            #expect(bucket < LatencyHistogram.bucketCount)
        }
    }

    @Test("percentiles report the upper edge of the bucket that holds them")
    func percentiles() {
        let counts = UnsafeMutablePointer<UInt64>.allocate(capacity: LatencyHistogram.bucketCount)
        defer { counts.deallocate() }
        counts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
        let histogram = LatencyHistogram(counts: counts)
        for value in 1...1000 { histogram.record(UInt64(value)) }
        #expect(histogram.total == 1000)
        let p50 = histogram.percentile(0.5)
        #expect(p50 >= 500 && p50 < 516)
        let p99 = histogram.percentile(0.99)
        #expect(p99 >= 990 && p99 < 1022)
        #expect(histogram.percentile(0) >= 1)
    }
}
