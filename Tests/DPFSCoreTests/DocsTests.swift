import Foundation
import Testing

// The guides quote code; the code compiles. Every Swift block in docs/*.md must stand, line for line
// (leading white space aside), in a Swift file of the repository, so a guide cannot keep showing
// code that no longer exists.

@Suite struct DocsTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func normalized(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.drop(while: { $0 == " " || $0 == "\t" }) }
            .joined(separator: "\n")
    }

    static func swiftBlocks(in markdown: String) -> [String] {
        var blocks: [String] = []
        var current: [Substring]? = nil
        for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
            if current == nil, line.hasPrefix("```swift") { current = [] }
            else if current != nil, line.hasPrefix("```") { blocks.append(current!.joined(separator: "\n")); current = nil }
            else if current != nil { current!.append(line) }
        }
        return blocks
    }

    static func swiftSources() throws -> String {
        var all = ""
        for folder in ["Sources", "Tests"] {
            let enumerator = FileManager.default.enumerator(at: root.appendingPathComponent(folder), includingPropertiesForKeys: nil)
            while let url = enumerator?.nextObject() as? URL {
                guard url.pathExtension == "swift", url.lastPathComponent != "DocsTests.swift" else { continue }
                all += normalized(try String(contentsOf: url, encoding: .utf8)) + "\n"
            }
        }
        return all
    }

    @Test("every Swift block of the guides is code that exists and compiles")
    func guidesQuoteRealCode() throws {
        let sources = try Self.swiftSources()
        let guide = try String(contentsOf: Self.root.appendingPathComponent("docs/writing-a-backend.md"), encoding: .utf8)
        let blocks = Self.swiftBlocks(in: guide)
        #expect(blocks.count >= 5)
        for block in blocks {
            #expect(sources.contains(Self.normalized(block)), "not in the sources:\n\(block)")
        }
        // The check can fail: a block that was edited after it was quoted is caught.
        #expect(!sources.contains(Self.normalized(blocks[0] + "\n    let edited = true")))
    }
}
