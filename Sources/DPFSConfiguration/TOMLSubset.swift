// The engine's configuration is TOML (as DPFS's is). This reads the subset the engine uses —
// `[table]`, `[[array.of.tables]]`, `key = "string" | integer | true/false`, `#` comments — and
// reports anything else with its line number instead of guessing.

public enum TOMLValue: Equatable, Sendable {
    case string(String)
    case integer(Int64)
    case boolean(Bool)
}

/// A table: keys in file order.
public struct TOMLTable: Equatable, Sendable {
    public var entries: [(key: String, value: TOMLValue, line: Int)] = []

    public static func == (a: TOMLTable, b: TOMLTable) -> Bool {
        a.entries.map(\.key) == b.entries.map(\.key) && a.entries.map(\.value) == b.entries.map(\.value)
    }

    public subscript(key: String) -> TOMLValue? { entries.first { $0.key == key }?.value }
}

public struct TOMLDocument: Sendable {
    /// `[name]` tables (the root table under "").
    public var tables: [String: TOMLTable] = ["": TOMLTable()]
    /// `[[name]]` arrays of tables, in order.
    public var tableArrays: [String: [TOMLTable]] = [:]
}

public struct ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    public let line: Int
    public let message: String

    public init(line: Int, _ message: String) {
        self.line = line
        self.message = message
    }

    public var description: String { line > 0 ? "line \(line): \(message)" : message }
}

public enum TOMLSubset {
    public static func parse(_ text: String) throws(ConfigurationError) -> TOMLDocument {
        var document = TOMLDocument()
        enum Target { case table(String), arrayElement(String) }
        var target = Target.table("")
        for (offset, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = offset + 1
            let line = stripComment(String(rawLine)).trimmingWhitespace()
            if line.isEmpty { continue }
            if line.hasPrefix("[[") {
                guard line.hasSuffix("]]") else { throw ConfigurationError(line: lineNumber, "unterminated [[table]] header") }
                let name = String(line.dropFirst(2).dropLast(2)).trimmingWhitespace()
                guard isBareKey(name) else { throw ConfigurationError(line: lineNumber, "bad table name '\(name)'") }
                document.tableArrays[name, default: []].append(TOMLTable())
                target = .arrayElement(name)
                continue
            }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw ConfigurationError(line: lineNumber, "unterminated [table] header") }
                let name = String(line.dropFirst().dropLast()).trimmingWhitespace()
                guard isBareKey(name) else { throw ConfigurationError(line: lineNumber, "bad table name '\(name)'") }
                guard document.tables[name] == nil else { throw ConfigurationError(line: lineNumber, "table [\(name)] defined twice") }
                document.tables[name] = TOMLTable()
                target = .table(name)
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw ConfigurationError(line: lineNumber, "expected 'key = value', a [table] or a [[table]]")
            }
            let key = String(line[..<equals]).trimmingWhitespace()
            guard isBareKey(key) else { throw ConfigurationError(line: lineNumber, "bad key '\(key)'") }
            let value = try parseValue(String(line[line.index(after: equals)...]).trimmingWhitespace(), line: lineNumber)
            switch target {
            case .table(let name):
                guard document.tables[name]![key] == nil else { throw ConfigurationError(line: lineNumber, "key '\(key)' set twice") }
                document.tables[name]!.entries.append((key, value, lineNumber))
            case .arrayElement(let name):
                let last = document.tableArrays[name]!.count - 1
                guard document.tableArrays[name]![last][key] == nil else { throw ConfigurationError(line: lineNumber, "key '\(key)' set twice") }
                document.tableArrays[name]![last].entries.append((key, value, lineNumber))
            }
        }
        return document
    }

    static func stripComment(_ line: String) -> String {
        var inString = false
        var escaped = false
        for (index, character) in zip(line.indices, line) {
            if inString {
                if escaped { escaped = false } else if character == "\\" { escaped = true } else if character == "\"" { inString = false }
            } else if character == "\"" {
                inString = true
            } else if character == "#" {
                return String(line[..<index])
            }
        }
        return line
    }

    static func isBareKey(_ key: String) -> Bool {
        !key.isEmpty && key.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".")
        }
    }

    static func parseValue(_ text: String, line: Int) throws(ConfigurationError) -> TOMLValue {
        if text == "true" { return .boolean(true) }
        if text == "false" { return .boolean(false) }
        if text.hasPrefix("\"") {
            guard text.count >= 2, text.hasSuffix("\"") else { throw ConfigurationError(line: line, "unterminated string") }
            var result = ""
            var escaped = false
            for character in text.dropFirst().dropLast() {
                if escaped {
                    switch character {
                    case "n": result.append("\n")
                    case "t": result.append("\t")
                    case "\\": result.append("\\")
                    case "\"": result.append("\"")
                    default: throw ConfigurationError(line: line, "unsupported escape \\\(character)")
                    }
                    escaped = false
                } else if character == "\\" {
                    escaped = true
                } else if character == "\"" {
                    throw ConfigurationError(line: line, "unexpected quote inside a string")
                } else {
                    result.append(character)
                }
            }
            guard !escaped else { throw ConfigurationError(line: line, "string ends in a backslash") }
            return .string(result)
        }
        let digits = text.replacingUnderscores()
        guard let number = Int64(digits) else {
            throw ConfigurationError(line: line, "value '\(text)' is not a string, integer or boolean (the engine reads a TOML subset)")
        }
        return .integer(number)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first == " " || first == "\t" || first == "\r" { scalars = scalars.dropFirst() }
        while let last = scalars.last, last == " " || last == "\t" || last == "\r" { scalars = scalars.dropLast() }
        return String(scalars)
    }

    func replacingUnderscores() -> String {
        // TOML allows 1_000_000, but only between digits.
        var out = ""
        var previousDigit = false
        for (index, character) in zip(indices, self) {
            if character == "_" {
                let nextIsDigit = self.index(after: index) < endIndex && self[self.index(after: index)].isNumber
                if !(previousDigit && nextIsDigit) { return "_" }
                continue
            }
            previousDigit = character.isNumber
            out.append(character)
        }
        return out
    }
}
