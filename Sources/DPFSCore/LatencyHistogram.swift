// A log-linear histogram (32 sub-buckets per power of two, so any recorded value is known to within
// 1/32 ≈ 3.1%: fine enough to see a few microseconds added to an NFS round trip of 40), held in
// caller memory so recording allocates nothing and costs one increment.

@frozen
public struct LatencyHistogram: @unchecked Sendable {
    public static let subBucketBits = 5
    public static let bucketCount = 64 << subBucketBits

    public let counts: UnsafeMutablePointer<UInt64>

    /// Wraps `bucketCount` zeroed counters.
    @inlinable
    public init(counts: UnsafeMutablePointer<UInt64>) {
        self.counts = counts
    }

    @inlinable @inline(__always)
    @_noAllocation @_noLocks
    public static func bucket(of value: UInt64) -> Int {
        let subBuckets = UInt64(1) << subBucketBits
        if value < subBuckets { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount            // value >= 32, so exponent >= 5
        let mantissa = Int(value >> UInt64(exponent - subBucketBits)) & (Int(subBuckets) - 1)
        return ((exponent - subBucketBits + 1) << subBucketBits) | mantissa
    }

    /// The smallest value that falls in `bucket`.
    @inlinable
    public static func lowerBound(ofBucket bucket: Int) -> UInt64 {
        let subBuckets = 1 << subBucketBits
        if bucket < subBuckets { return UInt64(bucket) }
        let exponent = (bucket >> subBucketBits) + subBucketBits - 1
        let mantissa = UInt64(bucket & (subBuckets - 1))
        return (UInt64(1) << UInt64(exponent)) | (mantissa << UInt64(exponent - subBucketBits))
    }

    @inlinable
    @_noAllocation @_noLocks
    public func record(_ value: UInt64) {
        counts[Self.bucket(of: value)] &+= 1
    }

    public var total: UInt64 {
        var sum: UInt64 = 0
        for index in 0..<Self.bucketCount { sum &+= counts[index] }
        return sum
    }

    /// The value at quantile `q` (0...1): the upper edge of the bucket holding it, so percentiles
    /// are never reported better than measured.
    public func percentile(_ q: Double) -> UInt64 {
        precondition(q >= 0 && q <= 1)
        let total = self.total
        guard total > 0 else { return 0 }
        let rank = max(1, UInt64((Double(total) * q).rounded(.up)))
        var seen: UInt64 = 0
        for index in 0..<Self.bucketCount {
            seen &+= counts[index]
            if seen >= rank {
                return index + 1 < Self.bucketCount ? Self.lowerBound(ofBucket: index + 1) - 1 : UInt64.max
            }
        }
        return UInt64.max
    }

    public func reset() {
        counts.update(repeating: 0, count: Self.bucketCount)
    }
}
