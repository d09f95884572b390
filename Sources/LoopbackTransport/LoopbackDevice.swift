import Synchronization
import DPFSCore
import FUSEWire
import Virtio

/// The engine side of the in-process transport: a split virtqueue served exactly as a vhost-user
/// device serves one, with the "call eventfd" replaced by a counter the driver can watch.
public struct LoopbackDevice: Transport {
    public var queue: SplitQueue
    /// Incremented once per notification the device decides to send.
    public let callCounter: UnsafeMutablePointer<Atomic<UInt64>>

    public init(queue: SplitQueue, callCounter: UnsafeMutablePointer<Atomic<UInt64>>) {
        self.queue = queue
        self.callCounter = callCounter
    }

    @inlinable
    public mutating func fetch(into segments: UnsafeMutablePointer<Segment>, capacity: Int) -> FetchResult {
        queue.pop(into: segments, capacity: capacity)
    }

    @inlinable
    public mutating func complete(handle: UInt32, replyBytes: UInt32) {
        queue.addUsed(head: handle, bytesWritten: replyBytes)
    }

    @inlinable
    public mutating func flush() -> Bool {
        queue.publishUsed()
        guard queue.needsNotification() else { return false }
        callCounter.pointee.add(1, ordering: .releasing)
        return true
    }
}
