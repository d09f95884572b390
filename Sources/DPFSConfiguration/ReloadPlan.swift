// What a re-read configuration changes (SIGHUP): devices are matched by name; a device whose
// settings are all equal keeps serving untouched, one whose settings changed is stopped and
// started again with the new ones, and the rest are added or removed. Pure, so the decision is
// tested apart from the threads that carry it out.

public struct ReloadPlan: Equatable, Sendable {
    /// Devices in the running set only: drained and stopped.
    public var removed: [String] = []
    /// Devices in both with different settings: stopped, then started with `started`'s settings.
    public var changed: [String] = []
    /// Devices in the new set only.
    public var added: [String] = []
    /// Devices in both with equal settings: not touched.
    public var unchanged: [String] = []
    /// What to start, in the new file's order (the changed and the added).
    public var started: [DeviceConfiguration] = []
    /// Engine-wide settings that differ; they take effect at the next start (said in the log).
    public var engineSettingsChanged: [String] = []

    public init() {}

    public init(running: EngineConfiguration, wanted: EngineConfiguration) {
        let old = Dictionary(uniqueKeysWithValues: running.devices.map { ($0.name, $0) })
        let new = Set(wanted.devices.map(\.name))
        removed = running.devices.map(\.name).filter { !new.contains($0) }
        for device in wanted.devices {
            guard let before = old[device.name] else {
                added.append(device.name)
                started.append(device)
                continue
            }
            if before == device {
                unchanged.append(device.name)
            } else {
                changed.append(device.name)
                started.append(device)
            }
        }
        if running.logLevel != wanted.logLevel { engineSettingsChanged.append("log_level") }
        if running.metricsAddress != wanted.metricsAddress { engineSettingsChanged.append("metrics_address") }
    }

    public var summary: String {
        "\(added.count) added, \(changed.count) changed, \(removed.count) removed, \(unchanged.count) unchanged"
    }
}
