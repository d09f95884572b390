import CDPFS
import Glibc

// Control-plane work (a reload building and tearing down devices) must not take CPU time the
// queues of other devices need: on a machine whose CPUs the pollers and their guests already keep
// busy, an equal share for the control plane is a request delayed by a scheduler slice or more.
// So that work runs at a lower priority (nice 10: about a tenth of a CPU when every CPU is busy),
// and every thread it starts goes back to the engine's own priority before it does anything.
// Raising a priority back needs CAP_SYS_NICE: an engine without it does not lower anything.

public enum ThreadPriority {
    /// The nice value threads run at: the process's when the engine started.
    nonisolated(unsafe) static var normal: Int32 = 0
    nonisolated(unsafe) static var canRestore = false

    /// Records the engine's priority; called once at start-up, before any thread is made.
    public static func recordNormal() {
        errno = 0
        let value = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
        normal = errno == 0 ? value : 0
        canRestore = geteuid() == 0
    }

    static var currentThread: id_t { id_t(CDPFS_gettid()) }

    /// Lowers the calling thread for control-plane work; returns whether it did.
    public static func lowerForControlWork() -> Bool {
        guard canRestore else { return false }
        return setpriority(__priority_which_t(PRIO_PROCESS.rawValue), currentThread, min(normal + 10, 19)) == 0
    }

    /// Puts the calling thread back at the engine's priority (a no-op when it is there already).
    public static func restoreCurrent() {
        guard canRestore else { return }
        errno = 0
        let now = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), currentThread)
        guard errno == 0, now != normal else { return }
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), currentThread, normal)
    }
}
