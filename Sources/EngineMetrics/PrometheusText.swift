import CDPFS
import DPFSCore
import FUSEWire

// The Prometheus text exposition format (version 0.0.4), written from a scrape. Hand-written
// rather than through swift-prometheus: its counters and histograms own their values behind a lock
// and take observations one at a time, while ours live in poller memory and are only summed here,
// at the scrape; a registry would be a second copy refreshed on every scrape.

public enum PrometheusText {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Every metric of every device, one HELP and TYPE per family.
    public static func render(_ devices: [DeviceScrape]) -> String {
        var out = Writer()
        engineFamilies(devices, into: &out)
        queueFamilies(devices, into: &out)
        opcodeFamilies(devices, into: &out)
        latencyFamilies(devices, into: &out)
        backendFamilies(devices, into: &out)
        return out.text
    }

    static func engineFamilies(_ devices: [DeviceScrape], into out: inout Writer) {
        out.family("dpfs_devices", "Devices this engine serves.", "gauge")
        out.sample("dpfs_devices", [], UInt64(devices.count))
        out.family("dpfs_device_info", "One series per device: its transport and backend.", "gauge")
        for device in devices {
            out.sample("dpfs_device_info", [("device", device.name), ("transport", device.transport), ("backend", device.backend)], 1)
        }
        out.family("dpfs_device_failures_total", "Queues that failed and need a device reset (a broken guest ring, say).", "counter")
        for device in devices { out.sample("dpfs_device_failures_total", [("device", device.name)], device.failures) }
        out.family("dpfs_frontend_connections_total", "vhost-user front-end connections accepted.", "counter")
        for device in devices { out.sample("dpfs_frontend_connections_total", [("device", device.name)], device.connections) }
    }

    /// Per-queue counters of the poller's `PollerMetrics`.
    static func queueFamilies(_ devices: [DeviceScrape], into out: inout Writer) {
        let families: [(String, String, String, (PollerMetrics) -> UInt64)] = [
            ("dpfs_queue_requests_total", "Requests fetched from the queue.", "counter", { $0.requestsFetched }),
            ("dpfs_replies_total", "Replies published.", "counter", { $0.repliesSent }),
            ("dpfs_errors_total", "Replies that carried an errno.", "counter", { $0.errorReplies }),
            ("dpfs_read_bytes_total", "Data bytes of successful READ replies.", "counter", { $0.bytesRead }),
            ("dpfs_written_bytes_total", "Data bytes of successful WRITEs, as the backend counted them.", "counter", { $0.bytesWritten }),
            ("dpfs_notifications_total", "Notifications (interrupts, io_uring submits) sent to the front-end.", "counter", { $0.notifications }),
            ("dpfs_decode_failures_total", "Requests refused before dispatch: bad lengths, names, unknown opcodes.", "counter", { $0.decodeFailures }),
            ("dpfs_unanswerable_requests_total", "Requests returned without a reply: no header, or no room for one.", "counter", { $0.unanswerableRequests }),
            ("dpfs_backend_pending_total", "Requests the backend finished later (asynchronous I/O).", "counter", { $0.pendingRequests }),
            ("dpfs_stale_completions_total", "Backend completions for slots that had moved on (ignored).", "counter", { $0.staleCompletions }),
            ("dpfs_slots_exhausted_total", "Fetch passes that stopped because every slot was busy.", "counter", { $0.slotsExhausted }),
            ("dpfs_transport_failures_total", "Times the queue's transport failed (the queue stops).", "counter", { $0.transportFailures }),
            ("dpfs_slots_in_use", "Requests in flight in the queue (as of the poller's last pass).", "gauge", { $0.slotsInUse }),
        ]
        for (name, help, type, value) in families {
            out.family(name, help, type)
            for device in devices {
                for queue in device.queues { out.sample(name, queueLabels(device, queue), value(queue.metrics)) }
            }
        }
        out.family("dpfs_slots", "Request slots of the queue (the most requests it holds in flight).", "gauge")
        for device in devices {
            for queue in device.queues { out.sample("dpfs_slots", queueLabels(device, queue), UInt64(queue.slots)) }
        }
    }

    /// Requests and errors by opcode and queue; errors by errno per device. Opcodes never seen
    /// are left out (64 of them per queue would be mostly zeros).
    static func opcodeFamilies(_ devices: [DeviceScrape], into out: inout Writer) {
        for (name, help, pick) in [
            ("dpfs_opcode_requests_total", "Requests dispatched, by FUSE opcode.", \QueueScrape.opcodeRequests),
            ("dpfs_opcode_errors_total", "Error replies, by FUSE opcode.", \QueueScrape.opcodeErrors),
        ] as [(String, String, KeyPath<QueueScrape, [UInt64]>)] {
            out.family(name, help, "counter")
            for device in devices {
                for queue in device.queues {
                    for (slot, value) in queue[keyPath: pick].enumerated() where value > 0 {
                        out.sample(name, queueLabels(device, queue) + [("opcode", opcodeName(slot))], value)
                    }
                }
            }
        }
        out.family("dpfs_errno_errors_total", "Error replies, by errno (ERRNO_127_PLUS for anything above 126).", "counter")
        for device in devices {
            for slot in 1..<PollerCounters.errnoSlots {
                let value = device.queues.reduce(UInt64(0)) { $0 &+ $1.errnoErrors[slot] }
                if value > 0 { out.sample("dpfs_errno_errors_total", [("device", device.name), ("errno", errnoName(slot))], value) }
            }
        }
    }

    /// Latency per device (the queues summed): by opcode class, fetch to publish; by slot state, sampled.
    static func latencyFamilies(_ devices: [DeviceScrape], into out: inout Writer) {
        out.family("dpfs_request_duration_seconds", "Time from fetch to reply, by opcode class (the engine's and backend's share of latency).", "histogram")
        for device in devices {
            for opcodeClass in OpcodeClass.allCases {
                let merged = device.queues.map { $0.classLatency[Int(opcodeClass.rawValue)] }.reduce(CoarseHistogram(), +)
                if merged.count > 0 { out.histogram("dpfs_request_duration_seconds", [("device", device.name), ("class", opcodeClass.name)], merged) }
            }
        }
        out.family("dpfs_slot_state_duration_seconds", "Time requests spend in each slot state (one request in 16 is timed).", "histogram")
        for device in devices {
            for state in SlotState.allCases where state != .free {
                let merged = device.queues.map { $0.stateLatency[Int(state.rawValue)] }.reduce(CoarseHistogram(), +)
                if merged.count > 0 { out.histogram("dpfs_slot_state_duration_seconds", [("device", device.name), ("state", "\(state)")], merged) }
            }
        }
    }

    /// What backends count on their control plane, as `dpfs_backend_NAME[_total]`.
    static func backendFamilies(_ devices: [DeviceScrape], into out: inout Writer) {
        var order: [String] = []
        var byName: [String: [(DeviceScrape, BackendCounter)]] = [:]
        for device in devices {
            for counter in device.backendCounters {
                if byName[counter.name] == nil { order.append(counter.name) }
                byName[counter.name, default: []].append((device, counter))
            }
        }
        for name in order {
            let samples = byName[name]!
            let first = samples[0].1
            let metric = "dpfs_backend_\(name)" + (first.kind == .counter ? "_total" : "")
            out.family(metric, first.help, first.kind.rawValue)
            for (device, counter) in samples where counter.kind == first.kind {
                out.sample(metric, [("device", device.name), ("backend", device.backend)], counter.value)
            }
        }
    }

    static func queueLabels(_ device: DeviceScrape, _ queue: QueueScrape) -> [(String, String)] {
        [("device", device.name), ("queue", String(queue.queue))]
    }

    static func opcodeName(_ slot: Int) -> String {
        if slot == PollerMetrics.opcodeCountSlots - 1 { return "OTHER" }
        return FUSEOpcode(rawValue: UInt32(slot))?.wireName ?? "OPCODE_\(slot)"
    }

    static func errnoName(_ slot: Int) -> String {
        if slot == PollerCounters.errnoSlots - 1 { return "ERRNO_127_PLUS" }
        guard let name = strerrorname_np(Int32(slot)) else { return "ERRNO_\(slot)" }
        return String(cString: name)
    }

    /// Appends lines; escapes label values as the format requires.
    struct Writer {
        var text = ""

        mutating func family(_ name: String, _ help: String, _ type: String) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }

        mutating func sample(_ name: String, _ labels: [(String, String)], _ value: UInt64) {
            text += "\(name)\(Self.labelText(labels)) \(value)\n"
        }

        mutating func histogram(_ name: String, _ labels: [(String, String)], _ histogram: CoarseHistogram) {
            var cumulative: UInt64 = 0
            for (index, count) in histogram.counts.enumerated() {
                cumulative &+= count
                let bound = index < latencyBoundariesSeconds.count ? "\(latencyBoundariesSeconds[index])" : "+Inf"
                text += "\(name)_bucket\(Self.labelText(labels + [("le", bound)])) \(cumulative)\n"
            }
            text += "\(name)_sum\(Self.labelText(labels)) \(histogram.sumSeconds)\n"
            text += "\(name)_count\(Self.labelText(labels)) \(cumulative)\n"
        }

        static func labelText(_ labels: [(String, String)]) -> String {
            guard !labels.isEmpty else { return "" }
            return "{" + labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
        }

        static func escape(_ value: String) -> String {
            var escaped = ""
            for character in value {
                switch character {
                case "\\": escaped += "\\\\"
                case "\"": escaped += "\\\""
                case "\n": escaped += "\\n"
                default: escaped.append(character)
                }
            }
            return escaped
        }
    }
}
