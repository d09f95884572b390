import Glibc

/// A pthread mutex, for the few places off the data path that need mutual exclusion (table
/// inserts and removals, the lock workers). Swift's `Synchronization.Mutex` waits on raw futexes,
/// which ThreadSanitizer cannot see, so it reported the critical sections it protects as races;
/// pthread mutexes are intercepted and checked. Allocated once; `withLock` allocates nothing.
public final class HostMutex: @unchecked Sendable {
    let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let result = pthread_mutex_init(mutex, nil)
        precondition(result == 0, "pthread_mutex_init failed: \(result)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    @usableFromInline func lock() { pthread_mutex_lock(mutex) }
    @usableFromInline func unlock() { pthread_mutex_unlock(mutex) }
}
