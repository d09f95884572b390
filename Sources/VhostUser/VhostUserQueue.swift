import CDPFS
import DPFSCore
import FUSEWire
import Glibc
import Virtio

/// The engine side of one vhost-user virtqueue: a split queue in mapped guest memory plus the call
/// eventfd that interrupts the guest. Until the front-end has configured and started the ring there
/// is no queue, and fetching yields nothing.
public struct VhostUserQueue: Transport, @unchecked Sendable {
    public var queue: SplitQueue?
    /// The guest's interrupt: written once per published batch the driver wants to hear about.
    public var callFD: Int32
    public var callWriteFailures: UInt64 = 0

    public init(queue: SplitQueue? = nil, callFD: Int32 = -1) {
        self.queue = queue
        self.callFD = callFD
    }

    @inlinable
    public mutating func fetch(into segments: UnsafeMutablePointer<Segment>, capacity: Int) -> FetchResult {
        guard queue != nil else { return .empty }
        return queue!.pop(into: segments, capacity: capacity)
    }

    @inlinable
    public mutating func complete(handle: UInt32, replyBytes: UInt32) {
        queue!.addUsed(head: handle, bytesWritten: replyBytes)
    }

    /// Publishes the batch and, if the driver wants it, signals the call eventfd: the one syscall of
    /// a batch.
    @inlinable
    public mutating func flush() -> Bool {
        queue!.publishUsed()
        guard queue!.needsNotification(), callFD >= 0 else { return false }
        var one: UInt64 = 1
        let written = _unsafePerformance { Glibc.write(callFD, &one, 8) }
        if written != 8 { callWriteFailures &+= 1 }
        return true
    }

    /// Asks the driver for a kick (EVENT_IDX or the no-notify flag), then looks once more: a request
    /// may have arrived before the driver could see the request for a kick.
    public mutating func armNotifications() -> Bool {
        guard queue != nil else { return false }
        queue!.setKicksWanted(true)
        return queue!.availableCount() > 0
    }

    public mutating func disarmNotifications() {
        guard queue != nil else { return }
        queue!.setKicksWanted(false)
    }

    public var isFailed: Bool { queue?.isFailed ?? false }
}
