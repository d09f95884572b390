import TOMLKit

// The engine's configuration is TOML, read by TOMLKit (toml++): all of TOML 1.0 — inline tables,
// 'literal' strings, 1_024, 0x4000_0000, dotted keys, arrays. Its tree is turned here into the
// few shapes the engine reads ([engine], [[device]]), each value with the line it was written on,
// so every later complaint names its line and key. toml++ keeps no key positions, so lines come
// from a scan of the text for `key =` under each table header (LineLocator); a key it cannot place
// (one inside an inline table, say) is reported with its table's line.

/// A value as the engine reads it.
public indirect enum ConfigValue: Equatable, Sendable {
    case string(String)
    case integer(Int64)
    case boolean(Bool)
    case float(Double)
    case array([ConfigValue])
    /// A table where a value was expected: always a mistake in the engine's schema.
    case table
    /// A date or time: TOML has them, the engine has no setting that takes one.
    case dateTime(String)

    /// For messages: "a string", "an array".
    public var kindName: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .boolean: "true or false"
        case .float: "a floating-point number"
        case .array: "an array"
        case .table: "a table"
        case .dateTime: "a date or time"
        }
    }
}

/// A table's entries, each with its line (sorted by line: the file's order where it is known).
public struct ConfigTable: Equatable, Sendable {
    public var entries: [ConfigEntry] = []
    /// The line of the table's header (or of its first key), for errors about the table itself.
    public var line: Int = 0

    public subscript(key: String) -> ConfigValue? { entries.first { $0.key == key }?.value }
}

public struct ConfigEntry: Equatable, Sendable {
    public let key: String
    public let value: ConfigValue
    public let line: Int
}

/// The parts of a document the engine knows: root keys, tables by name, arrays of tables by name.
public struct ConfigDocument: Sendable {
    /// Keys at the root that hold plain values (none are allowed; kept to be reported).
    public var rootEntries: [ConfigEntry] = []
    public var tables: [String: ConfigTable] = [:]
    public var tableArrays: [String: [ConfigTable]] = [:]
}

public struct ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    public let line: Int
    public let message: String
    /// The key the message is about, when a check made after reading (a limit, say) cannot know
    /// its line: whoever read the key fills the line in (`located`).
    public let key: String?

    public init(line: Int, key: String? = nil, _ message: String) {
        self.line = line
        self.key = key
        self.message = message
    }

    /// This error with the line of its key, when it had none.
    public func located(_ lines: [String: Int]) -> ConfigurationError {
        guard line == 0, let key, let found = lines[key] else { return self }
        return ConfigurationError(line: found, key: key, message)
    }

    public var description: String { line > 0 ? "line \(line): \(message)" : message }
}

public enum TOMLReader {
    /// The largest configuration file read (a configuration, not a data set).
    public static let textBytesMax = 1 << 20

    public static func parse(_ text: String) throws(ConfigurationError) -> ConfigDocument {
        guard text.utf8.count <= textBytesMax else { throw ConfigurationError(line: 0, "configuration is over \(textBytesMax >> 10) KiB") }
        let root: TOMLKit.TOMLTable
        do {
            root = try TOMLKit.TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError(line: error.source.begin.line, "not valid TOML: \(error.description)")
        } catch {
            throw ConfigurationError(line: 0, "not valid TOML: \(error)")
        }
        let lines = LineLocator(text)
        var document = ConfigDocument()
        for key in root.keys {
            let value = root[key]!
            if let table = value.table {
                document.tables[key] = convert(table, path: [key], lines: lines)
            } else if let array = value.array, !array.isEmpty, array.allSatisfy({ $0.table != nil }) {
                document.tableArrays[key] = array.enumerated().map { index, element in
                    convert(element.table!, path: [key], element: index, lines: lines)
                }
            } else {
                document.rootEntries.append(ConfigEntry(key: key, value: convert(value), line: lines.line(of: key, in: [], element: nil)))
            }
        }
        document.rootEntries.sort { $0.line < $1.line }
        return document
    }

    static func convert(_ table: TOMLKit.TOMLTable, path: [String], element: Int? = nil, lines: LineLocator) -> ConfigTable {
        // A table written inline (`engine = { ... }`, `device = [{ ... }]`) has no header: its
        // key's line stands for it.
        let header = lines.headerLine(path, element: element)
        var converted = ConfigTable(line: header != 0 ? header : lines.line(of: path[0], in: [], element: nil))
        for key in table.keys {
            let line = lines.line(of: key, in: path, element: element)
            converted.entries.append(ConfigEntry(key: key, value: convert(table[key]!), line: line == 0 ? converted.line : line))
        }
        converted.entries.sort { $0.line < $1.line }
        return converted
    }

    static func convert(_ value: TOMLValueConvertible) -> ConfigValue {
        switch value.type {
        case .string: return .string(value.string!)
        case .int: return .integer(Int64(value.int!))
        case .bool: return .boolean(value.bool!)
        case .double: return .float(value.double!)
        case .array: return .array(value.array!.map { convert($0) })
        case .table: return .table
        case .date, .time, .dateTime: return .dateTime(value.debugDescription)
        }
    }
}

/// Where keys were written: `key =` lines under `[table]` and `[[table]]` headers, by table path,
/// array element and key. Only for messages; a key it cannot place gets line 0.
struct LineLocator {
    struct Place: Hashable {
        let path: String
        let element: Int?
        let key: String
    }
    var keyLines: [Place: Int] = [:]
    var headerLines: [String: Int] = [:]

    init(_ text: String) {
        var path = ""
        var element: Int? = nil
        var elementCounts: [String: Int] = [:]
        for (offset, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.drop { $0 == " " || $0 == "\t" }
            let number = offset + 1
            if line.hasPrefix("[[") {
                path = Self.name(line.dropFirst(2).prefix { $0 != "]" })
                element = elementCounts[path, default: 0]
                elementCounts[path] = element! + 1
                headerLines["\(path)#\(element!)"] = number
            } else if line.hasPrefix("[") {
                path = Self.name(line.dropFirst().prefix { $0 != "]" })
                element = nil
                headerLines[path] = headerLines[path] ?? number
            } else if let equals = line.firstIndex(of: "="), !line.hasPrefix("#") {
                // `a.b = 1` under [t] sets key a of t (a table): the first part is the key we report.
                let key = Self.name(line[..<equals].prefix { $0 != "." })
                let place = Place(path: path, element: element, key: key)
                if keyLines[place] == nil { keyLines[place] = number }
            }
        }
    }

    /// Strips blanks and one level of quotes: `"log_level"` is the key log_level.
    static func name(_ text: Substring) -> String {
        var name = text.trimmingCharacters(in: " \t\r")
        if name.count >= 2, let first = name.first, first == "\"" || first == "'", name.last == first {
            name = String(name.dropFirst().dropLast())
        }
        return name
    }

    func line(of key: String, in path: [String], element: Int?) -> Int {
        keyLines[Place(path: path.joined(separator: "."), element: element, key: key)] ?? 0
    }

    func headerLine(_ path: [String], element: Int?) -> Int {
        let name = path.joined(separator: ".")
        return headerLines[element.map { "\(name)#\($0)" } ?? name] ?? 0
    }
}

extension Substring {
    func trimmingCharacters(in blanks: String) -> String {
        var text = self
        while let first = text.first, blanks.contains(first) { text = text.dropFirst() }
        while let last = text.last, blanks.contains(last) { text = text.dropLast() }
        return String(text)
    }
}

extension String {
    func trimmingWhitespace() -> String { Substring(self).trimmingCharacters(in: " \t\r") }
}
