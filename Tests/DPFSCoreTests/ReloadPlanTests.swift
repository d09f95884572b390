import DPFSBackends
import DPFSConfiguration
import Foundation
import Testing

/// What a re-read configuration changes: matched by name, restarted only when a setting differs.
@Suite struct ReloadPlanTests {
    static func parse(_ text: String) throws -> EngineConfiguration {
        try EngineConfiguration.parse(text, backends: RegisteredBackends.registry)
    }

    @Test("added, changed, removed and unchanged devices, and engine settings that wait for a restart")
    func plan() throws {
        let running = try Self.parse("""
            [[device]]
            name = "keep"
            socket = "/run/keep.sock"
            [[device]]
            name = "change"
            socket = "/run/change.sock"
            slots = 64
            [[device]]
            name = "drop"
            socket = "/run/drop.sock"
            """)
        let wanted = try Self.parse("""
            [engine]
            log_level = "debug"
            [[device]]
            name = "add"
            socket = "/run/drop.sock"      # the removed device's socket, free once it stopped
            [[device]]
            name = "change"
            socket = "/run/change.sock"
            slots = 128
            [[device]]
            socket = '/run/keep.sock'      # the same settings, spelled otherwise
            name = 'keep'
            """)
        let plan = ReloadPlan(running: running, wanted: wanted)
        #expect(plan.removed == ["drop"])
        #expect(plan.changed == ["change"])
        #expect(plan.added == ["add"])
        #expect(plan.unchanged == ["keep"])
        #expect(plan.started.map(\.name) == ["add", "change"])
        #expect(plan.started[1].queues.slotsPerQueue == 128)
        #expect(plan.engineSettingsChanged == ["log_level"])
        #expect(plan.summary == "1 added, 1 changed, 1 removed, 1 unchanged")
    }

    @Test("the same file again changes nothing")
    func identity() throws {
        let text = "[[device]]\nname = \"a\"\nsocket = \"/a\"\nbackend = \"null\"\nnull_file_size = 4096\n"
        let plan = ReloadPlan(running: try Self.parse(text), wanted: try Self.parse(text))
        #expect(plan.unchanged == ["a"] && plan.started.isEmpty && plan.removed.isEmpty && plan.engineSettingsChanged.isEmpty)
        // A backend setting is a change too.
        let changed = ReloadPlan(running: try Self.parse(text), wanted: try Self.parse(text.replacingOccurrences(of: "4096", with: "8192")))
        #expect(changed.changed == ["a"])
    }
}
