import DPFSBackends
import DPFSConfiguration
import DPFSPosix
import EngineMetrics
import Foundation
import Logging
import Synchronization

// The devices the engine serves, and what SIGHUP does to them: the file is read again; if it does
// not validate nothing changes and the log says why; otherwise removed devices are drained and
// stopped, changed ones restarted with their new settings, added ones started, and every other
// device keeps serving on its own threads, never paused (ReloadPlan decides; this carries it out).

/// Set by SIGHUP; the main thread looks every 20 ms.
let reloadRequested = Atomic<Bool>(false)

/// One device being served: its settings, its server, its thread and its own stop flag.
final class RunningDevice: @unchecked Sendable {
    let configuration: DeviceConfiguration
    let started: StartedDevice
    let stop = Atomic<Bool>(false)
    /// Set when the server's run returned: asked to stop, or its host mount was unmounted.
    let ended = Atomic<Bool>(false)
    var thread: PinnedThread?

    init(configuration: DeviceConfiguration, started: StartedDevice) {
        self.configuration = configuration
        self.started = started
    }

    func startThread() throws {
        let server = started.server
        thread = try PinnedThread { [self] in
            server.run(until: stop)
            ended.store(true, ordering: .releasing)
        }
    }

    /// Drains the device (its queues quiesce: requests in flight are answered first), stops its
    /// thread and frees its socket; returns the stop report lines.
    func stopAndJoin() -> [String] {
        stop.store(true, ordering: .releasing)
        thread?.join()
        thread = nil
        var lines = [started.server.stopAndReport()]
        started.server.closeListener()
        if let report = started.stopReport() { lines.append("\(started.name): \(report)") }
        return lines
    }
}

/// The running devices by name. The metrics listener scrapes under the same lock, so a device is
/// never read while it is being taken out.
final class DeviceTable: Sendable {
    let devices = Mutex<[RunningDevice]>([])

    func add(_ device: RunningDevice) { devices.withLock { $0.append(device) } }

    /// Takes `name` out of the table (a scrape after this no longer sees it).
    func remove(_ name: String) -> RunningDevice? {
        devices.withLock { list in
            guard let index = list.firstIndex(where: { $0.started.name == name }) else { return nil }
            return list.remove(at: index)
        }
    }

    func all() -> [RunningDevice] { devices.withLock { $0 } }

    /// Every device's server returned by itself (each host mount was unmounted from outside):
    /// nothing is left to serve.
    var allEnded: Bool { all().allSatisfy { $0.ended.load(ordering: .acquiring) } }

    func render(cyclesPerSecond: Double) -> String {
        devices.withLock { list in PrometheusText.render(list.map { $0.started.scrape(cyclesPerSecond: cyclesPerSecond) }) }
    }
}

/// Starts devices from their settings (DPFSEngine.start) and applies reloads to a table.
struct DeviceSupervisor {
    let engine: DPFSEngine
    let table: DeviceTable
    let clock: CycleClock
    let logger: Logger

    /// Builds, binds and starts one device's thread; throws with the device's name on failure.
    func start(_ device: DeviceConfiguration, devicesInProcess: Int) throws -> RunningDevice {
        var starter = DeviceStarter(engine: engine, device: device, clock: clock, devicesInProcess: devicesInProcess)
        try RegisteredBackends.visitAll(&starter)
        guard let started = starter.started else { throw StartupError("device \(device.name): backend \(device.backend.backend) is not registered") }
        let running = RunningDevice(configuration: device, started: started)
        try running.startThread()
        return running
    }

    /// Re-reads `path` and applies the difference to the running devices; returns the
    /// configuration now in force (the old one when the file did not validate).
    func reload(path: String, running current: EngineConfiguration) -> EngineConfiguration {
        // Below the queues' priority while it builds and tears down devices (ThreadPriority).
        _ = ThreadPriority.lowerForControlWork()
        defer { ThreadPriority.restoreCurrent() }
        let wanted: EngineConfiguration
        do {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            wanted = try EngineConfiguration.parse(text, backends: RegisteredBackends.registry)
        } catch {
            logger.error("reload: \(path): \(error); nothing changed")
            return current
        }
        let plan = ReloadPlan(running: current, wanted: wanted)
        for name in plan.engineSettingsChanged { logger.warning("reload: \(name) changed; it takes effect at the next start") }
        var previous: [String: RunningDevice] = [:]
        for name in plan.removed + plan.changed {
            guard let device = table.remove(name) else { continue }
            for line in device.stopAndJoin() { logger.info("reload: \(line)") }
            previous[name] = device
        }
        var inForce = wanted
        for device in plan.started {
            do {
                table.add(try start(device, devicesInProcess: wanted.devices.count))
            } catch {
                logger.error("reload: \(error)")
                inForce.devices.removeAll { $0.name == device.name }
                restoreAfterFailedStart(previous[device.name], into: &inForce, devicesInProcess: wanted.devices.count)
            }
        }
        logger.info("reload: \(plan.summary) (\(table.all().count) device(s) serving)")
        return inForce
    }

    /// A changed device whose new settings failed to start goes back to its old ones.
    func restoreAfterFailedStart(_ old: RunningDevice?, into inForce: inout EngineConfiguration, devicesInProcess: Int) {
        guard let old else { return }
        do {
            table.add(try start(old.configuration, devicesInProcess: devicesInProcess))
            inForce.devices.append(old.configuration)
            logger.warning("reload: device \(old.configuration.name) keeps its previous settings")
        } catch {
            logger.error("reload: device \(old.configuration.name) could not be started again with its previous settings either: \(error)")
        }
    }
}
