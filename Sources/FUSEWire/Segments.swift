// Scatter-gather segments: the pieces of one request or reply as the transport found them (virtio
// descriptors, a /dev/fuse buffer). The codec treats them as one byte stream and never assumes one
// structure per segment (virtio-fs-protocol.md §4.1).

/// One contiguous piece of a request or reply, already translated to a local address and checked
/// against the memory it lives in by the transport.
@frozen
public struct Segment: @unchecked Sendable {
    public var base: UnsafeMutableRawPointer
    public var length: UInt32

    @inlinable
    public init(base: UnsafeMutableRawPointer, length: UInt32) {
        self.base = base
        self.length = length
    }
}

/// A position in a segment list: which segment, and how far into it.
@frozen
public struct SegmentPosition: Equatable, Sendable {
    public var index: UInt16
    public var offset: UInt32

    @inlinable
    public init(index: UInt16, offset: UInt32) {
        self.index = index
        self.offset = offset
    }
}

/// A read/write cursor over a list of segments. It never steps outside the segments it was given.
@frozen
public struct SegmentCursor {
    public let segments: UnsafePointer<Segment>
    public let count: Int
    public var position: SegmentPosition

    @inlinable
    public init(segments: UnsafePointer<Segment>, count: Int, position: SegmentPosition = .init(index: 0, offset: 0)) {
        precondition(count >= 0 && count <= Int(UInt16.max))
        self.segments = segments
        self.count = count
        self.position = position
    }

    /// Copies `byteCount` bytes from the cursor into `destination` and advances.
    /// Returns the number of bytes copied, smaller than `byteCount` only at the end of the segments.
    @inlinable
    @_noAllocation @_noLocks
    public mutating func read(into destination: UnsafeMutableRawPointer, byteCount: Int) -> Int {
        var copied = 0
        while copied < byteCount && Int(position.index) < count {
            let segment = segments[Int(position.index)]
            let available = Int(segment.length) - Int(position.offset)
            if available <= 0 {
                position = SegmentPosition(index: position.index &+ 1, offset: 0)
                continue
            }
            let chunk = min(available, byteCount - copied)
            (destination + copied).copyMemory(from: segment.base + Int(position.offset), byteCount: chunk)
            copied += chunk
            position.offset &+= UInt32(chunk)
        }
        return copied
    }

    /// Copies `byteCount` bytes from `source` into the segments at the cursor and advances.
    /// Returns the number of bytes written, smaller than `byteCount` only at the end of the segments.
    @inlinable
    @_noAllocation @_noLocks
    public mutating func write(from source: UnsafeRawPointer, byteCount: Int) -> Int {
        var written = 0
        while written < byteCount && Int(position.index) < count {
            let segment = segments[Int(position.index)]
            let available = Int(segment.length) - Int(position.offset)
            if available <= 0 {
                position = SegmentPosition(index: position.index &+ 1, offset: 0)
                continue
            }
            let chunk = min(available, byteCount - written)
            (segment.base + Int(position.offset)).copyMemory(from: source + written, byteCount: chunk)
            written += chunk
            position.offset &+= UInt32(chunk)
        }
        return written
    }

    /// Advances by `byteCount` bytes without copying. Returns the number of bytes skipped.
    @inlinable
    @_noAllocation @_noLocks
    public mutating func skip(byteCount: Int) -> Int {
        var skipped = 0
        while skipped < byteCount && Int(position.index) < count {
            let available = Int(segments[Int(position.index)].length) - Int(position.offset)
            if available <= 0 {
                position = SegmentPosition(index: position.index &+ 1, offset: 0)
                continue
            }
            let chunk = min(available, byteCount - skipped)
            skipped += chunk
            position.offset &+= UInt32(chunk)
        }
        return skipped
    }
}
