// What a backend declares about its settings, so the engine reads them from TOML and the command
// line, checks them and documents them without a line of backend-specific code: each setting has
// one TOML key (its command-line flag is derived), a kind with its range or choices, one default
// and one help line. A backend module exports a `BackendSchema`; the engine's registry lists them.

/// One setting's value as written.
public enum SettingValue: Equatable, Sendable, CustomStringConvertible {
    case string(String)
    case integer(Int)
    case boolean(Bool)

    public var description: String {
        switch self {
        case .string(let text): "\"\(text)\""
        case .integer(let number): String(number)
        case .boolean(let flag): String(flag)
        }
    }
}

/// One setting a backend takes.
public struct Setting: Sendable {
    public enum Kind: Sendable {
        /// Free text; `required` settings must not be empty.
        case string
        /// A whole number in the range (units are in the key's name).
        case integer(ClosedRange<Int>)
        case boolean
        /// One of a fixed list of words.
        case choice([String])
    }

    /// The TOML key (`snake_case`, unit last); the command-line flag is derived from it.
    public let key: String
    public let kind: Kind
    /// Nil: the setting is required (the device does not start without it).
    public let defaultValue: SettingValue?
    public let help: String

    public init(_ key: String, _ kind: Kind, default defaultValue: SettingValue?, help: String) {
        precondition(!key.isEmpty && key.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "_" }, "setting keys are snake_case")
        self.key = key
        self.kind = kind
        self.defaultValue = defaultValue
        self.help = help
        if let defaultValue { precondition((try? check(defaultValue, line: 0)) != nil, "default of \(key) out of its own range") }
    }

    /// `--shared-dir` for `shared_dir`.
    public var flag: String { "--" + String(key.map { $0 == "_" ? "-" : $0 }) }

    /// The value checked against the kind (type, range, choices); the error names the key and line.
    @discardableResult
    public func check(_ value: SettingValue, line: Int) throws(ConfigurationError) -> SettingValue {
        switch (kind, value) {
        case (.string, .string), (.boolean, .boolean):
            return value
        case (.integer(let range), .integer(let number)):
            guard range.contains(number) else { throw ConfigurationError(line: line, "\(key) must be \(range.lowerBound)...\(range.upperBound)") }
            return value
        case (.choice(let words), .string(let word)):
            guard words.contains(word) else { throw ConfigurationError(line: line, "\(key) must be one of \(words.joined(separator: ", "))") }
            return value
        case (.integer, _): throw ConfigurationError(line: line, "'\(key)' must be an integer")
        case (.boolean, _): throw ConfigurationError(line: line, "'\(key)' must be true or false")
        case (.string, _), (.choice, _): throw ConfigurationError(line: line, "'\(key)' must be a string")
        }
    }

    /// A command-line argument's text as this setting's value.
    public func parse(argument text: String) throws(ConfigurationError) -> SettingValue {
        switch kind {
        case .string, .choice: return try check(.string(text), line: 0)
        case .integer:
            guard let number = Int(text.filter { $0 != "_" }) else { throw ConfigurationError(line: 0, "\(flag) must be an integer") }
            return try check(.integer(number), line: 0)
        case .boolean:
            guard let flag = ["true": true, "false": false][text] else { throw ConfigurationError(line: 0, "\(self.flag) must be true or false") }
            return .boolean(flag)
        }
    }
}

/// The transport a device's backend is served over, for a backend's cross-checks.
public struct BackendDeployment: Equatable, Sendable {
    public var transport: TransportKind
    /// The host mount offers the kernel's FUSE passthrough (backing files).
    public var kernelPassthrough: Bool

    public init(transport: TransportKind, kernelPassthrough: Bool = false) {
        self.transport = transport
        self.kernelPassthrough = kernelPassthrough
    }
}

/// What a backend module declares about itself for the configuration: its name, its settings,
/// and the checks that span several settings or the transport.
public struct BackendSchema: Sendable {
    public let name: String
    public let summary: String
    public let settings: [Setting]
    /// Whether OPEN may answer with a kernel passthrough backing file (`fuse_passthrough`).
    public let offersKernelPassthrough: Bool
    /// Checks across settings and the transport, after each setting passed its own check.
    public let check: @Sendable (BackendSettings, BackendDeployment) throws(ConfigurationError) -> Void

    public init(name: String, summary: String, settings: [Setting], offersKernelPassthrough: Bool = false,
                check: @escaping @Sendable (BackendSettings, BackendDeployment) throws(ConfigurationError) -> Void = { _, _ throws(ConfigurationError) in }) {
        precondition(Set(settings.map(\.key)).count == settings.count, "backend \(name) declares a key twice")
        self.name = name
        self.summary = summary
        self.settings = settings
        self.offersKernelPassthrough = offersKernelPassthrough
        self.check = check
    }

    public func setting(_ key: String) -> Setting? { settings.first { $0.key == key } }

    /// Every setting at its default (required ones absent).
    public var defaults: BackendSettings {
        var values: [String: SettingValue] = [:]
        for setting in settings { values[setting.key] = setting.defaultValue }
        return BackendSettings(backend: name, values: values)
    }

    /// Settings given (each already checked) completed with defaults, then every required one
    /// present and the backend's own cross-checks passed.
    public func complete(_ given: [String: SettingValue], device: String, deployment: BackendDeployment) throws(ConfigurationError) -> BackendSettings {
        var settings = defaults
        for (key, value) in given {
            guard self.setting(key) != nil else { throw ConfigurationError(line: 0, "device \(device): \(key) is not a setting of the \(name) backend") }
            settings.values[key] = value
        }
        for setting in self.settings where settings.values[setting.key] == nil {
            throw ConfigurationError(line: 0, "device \(device): the \(name) backend needs \(setting.key) (\(setting.flag))")
        }
        do throws(ConfigurationError) {
            try check(settings, deployment)
        } catch {
            throw ConfigurationError(line: error.line, key: error.key, "device \(device): \(error.message)")
        }
        return settings
    }
}

/// A device's backend and its settings: the backend's name tags the values, which its schema
/// checked. Backends read them typed (`string`, `integer`, `boolean`, `choice`).
public struct BackendSettings: Equatable, Sendable {
    public let backend: String
    public internal(set) var values: [String: SettingValue]

    public init(backend: String, values: [String: SettingValue]) {
        self.backend = backend
        self.values = values
    }

    public func string(_ key: String) -> String {
        guard case .string(let text)? = values[key] else { preconditionFailure("\(backend): \(key) is not a checked string setting") }
        return text
    }

    public func integer(_ key: String) -> Int {
        guard case .integer(let number)? = values[key] else { preconditionFailure("\(backend): \(key) is not a checked integer setting") }
        return number
    }

    public func boolean(_ key: String) -> Bool {
        guard case .boolean(let flag)? = values[key] else { preconditionFailure("\(backend): \(key) is not a checked boolean setting") }
        return flag
    }

    /// A choice setting as the enum whose raw values its schema lists.
    public func choice<Choice: RawRepresentable>(_ key: String, _: Choice.Type) -> Choice where Choice.RawValue == String {
        guard let value = Choice(rawValue: string(key)) else { preconditionFailure("\(backend): \(key) names no \(Choice.self)") }
        return value
    }
}

/// The backends the engine knows, by name: what the configuration reader checks devices against.
public struct BackendRegistry: Sendable {
    /// "the nfs backend", "the passthrough and nfs backends", "the passthrough, nfs and kv backends".
    static func list(_ names: [String]) -> String {
        precondition(!names.isEmpty)
        guard names.count > 1 else { return "\(names[0]) backend" }
        return names.dropLast().joined(separator: ", ") + " and \(names.last!) backends"
    }

    public let schemas: [BackendSchema]

    public init(_ schemas: [BackendSchema]) {
        precondition(!schemas.isEmpty && Set(schemas.map(\.name)).count == schemas.count, "backend names must be distinct")
        self.schemas = schemas
    }

    public var names: [String] { schemas.map(\.name) }

    public func schema(_ name: String) -> BackendSchema? { schemas.first { $0.name == name } }

    /// A setting some backend declares (so a key of another backend is a clear mistake, not an
    /// unknown key).
    public func anySetting(_ key: String) -> Setting? {
        for schema in schemas { if let setting = schema.setting(key) { return setting } }
        return nil
    }

    /// The settings of every backend, for --help and the configuration reference.
    public var help: String {
        schemas.map { schema in
            let lines = schema.settings.map { setting in
                let fallback = setting.defaultValue.map { "default \($0)" } ?? "required"
                return "  \(setting.flag) / \(setting.key): \(setting.help) (\(fallback))"
            }
            return (["backend \(schema.name): \(schema.summary)"] + lines).joined(separator: "\n")
        }.joined(separator: "\n")
    }
}

extension BackendRegistry {
    /// The backend settings given on the command line (`--shared-dir DIR` or `--shared-dir=DIR`;
    /// a boolean flag alone means true), each checked against `backend`'s schema. A flag of
    /// another backend says whose it is; anything else is not an option.
    public func commandLineSettings(_ arguments: [String], backend: String) throws(ConfigurationError) -> [String: SettingValue] {
        guard let schema = schema(backend) else {
            throw ConfigurationError(line: 0, "unknown backend '\(backend)' (known: \(names.joined(separator: ", ")))")
        }
        var given: [String: SettingValue] = [:]
        var position = 0
        while position < arguments.count {
            let argument = arguments[position]
            position += 1
            let parts = argument.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let flag = String(parts[0])
            guard let setting = schema.settings.first(where: { $0.flag == flag }) else {
                let owners = schemas.filter { $0.settings.contains { $0.flag == flag } }.map(\.name)
                guard owners.isEmpty else { throw ConfigurationError(line: 0, "\(flag) is only for the \(BackendRegistry.list(owners))") }
                throw ConfigurationError(line: 0, "unknown option '\(argument)' (see --help)")
            }
            guard given[setting.key] == nil else { throw ConfigurationError(line: 0, "\(flag) given twice") }
            let text: String
            if parts.count == 2 {
                text = String(parts[1])
            } else if case .boolean = setting.kind {
                text = "true"
            } else {
                guard position < arguments.count else { throw ConfigurationError(line: 0, "\(flag) needs a value") }
                text = arguments[position]
                position += 1
            }
            given[setting.key] = try setting.parse(argument: text)
        }
        return given
    }
}
