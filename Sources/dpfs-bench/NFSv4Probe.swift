import ArgumentParser
import Glibc
import NFSBackend
import NFSv4Wire

/// `dpfs-bench nfs4-probe`: a file's whole life over NFSv4.1 against a real server, through our own
/// XDR and libnfs's transport, each step's result checked: client id and session, the export's
/// handle walked from the pseudo root, OPEN creating a file, WRITE 64 KiB, COMMIT, READ back,
/// GETATTR, SETATTR, CLOSE, CREATE of a directory, READDIR finding both, RENAME, LOOKUP of a missing
/// name (NOENT), REMOVE, then DESTROY_SESSION and DESTROY_CLIENTID. `--keep NAME` leaves the file
/// (tools/host/test-nfs4-session.sh compares it with the pattern on the server's disk); `--verify
/// NAME` only reads NAME and compares (its control: a byte changed on disk must fail it).
struct NFSv4Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nfs4-probe",
        abstract: "Drive a file's life over NFSv4.1 (our XDR, a real server): session, OPEN, WRITE, READ, SETATTR, READDIR, RENAME, REMOVE.")

    @Option(help: "The export: nfs://HOST/PSEUDO-PATH?version=4.1&nfsport=N.")
    var nfsURL: String

    @Option(help: "Leave the written file under this name in the export's root (nothing else).")
    var keep: String? = nil

    @Option(help: "Only read this file of the export's root and compare it with the pattern.")
    var verify: String? = nil

    @Option(help: "Milliseconds a call may take.")
    var timeoutMs: Int = 10_000

    static let dataBytes = 64 << 10

    /// The bytes written and expected: position-dependent, so a shifted or repeated block shows.
    static func pattern(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: index &* 131 &+ index >> 8 &+ 7) }

    func run() throws {
        let url: NFSURL
        do { url = try NFSURL.parse(nfsURL) } catch { throw ValidationError("\(error)") }
        guard url.version == 4, url.minorVersion == 1 else { throw ValidationError("nfs4-probe speaks NFSv4.1: version=4.1") }
        let client = try NFSv4ControlClient(url: url, timeoutMilliseconds: timeoutMs)
        defer { client.close() }
        var hostBytes = [UInt8](repeating: 0, count: 256)
        gethostname(&hostBytes, 255)
        let hostName = String(decoding: hostBytes.prefix { $0 != 0 }, as: UTF8.self)
        let owner = Array("dpfs-probe/\(hostName)/\(getpid())".utf8)
        let random = UInt64.random(in: 0...UInt64.max)
        let session = try NFSv4ControlSession(client: client, owner: owner, verifier: random, slots: 4, transferBytesMax: 1 << 20)
        print("nfs4-probe: client id \(String(session.clientID, radix: 16)), session of \(session.fore.requestsMax) slot(s), "
              + "request ≤ \(session.fore.requestBytesMax) B, response ≤ \(session.fore.responseBytesMax) B; RECLAIM_COMPLETE ok")
        let probe = ProbeSteps(session: session, owner: owner)
        let root = try probe.exportHandle(url.exportPath)
        print("nfs4-probe: export \(url.exportPath): handle of \(root.count) bytes")
        if let verify {
            try probe.verify(root: root, name: verify)
        } else {
            try probe.lifecycle(root: root, keep: keep)
        }
        try session.destroy()
        print("nfs4-probe: DESTROY_SESSION, DESTROY_CLIENTID ok")
    }
}

struct ProbeFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The probe's steps, each one COMPOUND after SEQUENCE.
struct ProbeSteps {
    let session: NFSv4ControlSession
    let owner: [UInt8]
    let name = Array("dpfs-probe-\(getpid())".utf8)
    let directory = Array("dpfs-probe-\(getpid()).d".utf8)

    /// PUTROOTFH, a LOOKUP per component of the pseudo path, GETFH.
    func exportHandle(_ path: String) throws -> [UInt8] {
        let components = path.split(separator: "/").map { Array($0.utf8) }
        precondition(components.count <= CompoundWriter.operationsMax - 4)
        return try session.call("PUTROOTFH+LOOKUP+GETFH", operations: components.count + 2) { writer in
            writer.putrootfh()
            for component in components { component.withUnsafeBytes { writer.lookup($0) } }
            writer.getfh()
        } read: { reader, _ throws(XDRError) -> [UInt8] in
            guard try reader.next(.putrootfh) == .ok else { return [] }
            for _ in components { guard try reader.next(.lookup) == .ok else { return [] } }
            guard try reader.next(.getfh) == .ok else { return [] }
            return Array(try reader.handle())
        }.nonEmpty(or: "the export's pseudo path \(path) is not found")
    }

    /// OPEN (create, or not) by name in `directory`; the stateid and the file's handle.
    func open(in directory: [UInt8], name: [UInt8], access: UInt32, create: NFSv4OpenCreate) throws -> (NFSv4Stateid, [UInt8]) {
        let owner = self.owner
        let result: (NFSv4Status, NFSv4OpenResult?, [UInt8]) = try session.call("OPEN", operations: 3) { writer in
            directory.withUnsafeBytes { writer.putfh($0) }
            owner.withUnsafeBytes { ownerBytes in
                name.withUnsafeBytes { writer.open(clientID: session.clientID, owner: ownerBytes,
                                                   access: access | NFSv4ShareAccess.wantNoDelegation, create: create, claim: .name($0)) }
            }
            writer.getfh()
        } read: { reader, _ throws(XDRError) in
            guard try reader.next(.putfh) == .ok else { return (.badhandle, nil, []) }
            let status = try reader.next(.open)
            guard status == .ok else { return (status, nil, []) }
            let opened = try reader.openResult()
            guard try reader.next(.getfh) == .ok else { return (.serverfault, nil, []) }
            return (.ok, opened, Array(try reader.handle()))
        }
        guard let opened = result.1 else { throw ProbeFailure("OPEN \(String(decoding: name, as: UTF8.self)): nfsstat4 \(result.0.rawValue)") }
        guard opened.delegation == 0 || opened.delegation == 3 else { throw ProbeFailure("OPEN: a delegation was granted though none was wanted") }
        return (opened.stateid, result.2)
    }
}

extension Array where Element == UInt8 {
    func nonEmpty(or message: String) throws -> [UInt8] {
        guard !isEmpty else { throw ProbeFailure(message) }
        return self
    }
}

extension ProbeSteps {
    /// One COMPOUND: PUTFH of `handle`, then `body`'s operations; `read` gets the reader after PUTFH.
    func onHandle<T>(_ what: String, _ handle: [UInt8], operations: Int, roomBytes: Int = 0,
                     _ body: (inout CompoundWriter) -> Void,
                     read: (inout CompoundReader) throws(XDRError) -> T) throws -> T {
        try session.call(what, operations: operations + 1, roomBytes: roomBytes) { writer in
            handle.withUnsafeBytes { writer.putfh($0) }
            body(&writer)
        } read: { reader, _ throws(XDRError) in
            guard try reader.next(.putfh) == .ok else { throw XDRError.invalid(at: 0, value: NFSv4Status.badhandle.rawValue) }
            return try read(&reader)
        }
    }

    func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        guard condition else { throw ProbeFailure(message()) }
    }

    func lifecycle(root: [UInt8], keep: String?) throws {
        let name = keep.map { Array($0.utf8) } ?? self.name
        let (stateid, file) = try open(in: root, name: name, access: NFSv4ShareAccess.both, create: .guarded(NFSv4SetAttributes(mode: 0o644)))
        print("nfs4-probe: OPEN GUARDED \(String(decoding: name, as: UTF8.self)): stateid seq \(stateid.sequence), handle of \(file.count) bytes")
        let written = try onHandle("WRITE", file, operations: 1, roomBytes: NFSv4Probe.dataBytes + 1024) { writer in
            guard let area = writer.write(stateid, offset: 0, stability: .unstable, byteCount: NFSv4Probe.dataBytes) else { return }
            for index in 0..<area.count { area[index] = NFSv4Probe.pattern(index) }
        } read: { reader throws(XDRError) in try reader.next(.write) == .ok ? try reader.writeResult() : nil }
        guard let written else { throw ProbeFailure("WRITE failed") }
        try expect(Int(written.count) == NFSv4Probe.dataBytes, "WRITE took \(written.count) of \(NFSv4Probe.dataBytes) bytes")
        let committed = try onHandle("COMMIT", file, operations: 1) { writer in writer.commit(offset: 0, count: 0) } read: { reader throws(XDRError) in
            try reader.next(.commit) == .ok ? try reader.commitVerifier() : nil
        }
        try expect(committed == written.verifier, "COMMIT's verifier \(String(describing: committed)) is not WRITE's \(written.verifier)")
        print("nfs4-probe: WRITE \(written.count) B UNSTABLE, COMMIT with the same verifier")
        try readBack(file, stateid: stateid)
        let attributes = try onHandle("SETATTR+GETATTR", file, operations: 2) { writer in
            writer.setattr(stateid, NFSv4SetAttributes(mode: 0o600))
            writer.getattr(.standard)
        } read: { reader throws(XDRError) -> NFSv4Attributes? in
            let status = try reader.next(.setattr)
            let set = try reader.setattrResult()
            guard status == .ok, set.contains(NFSv4SetAttributes.modeBit), try reader.next(.getattr) == .ok else { return nil }
            return try reader.attributes()
        }
        guard let attributes else { throw ProbeFailure("SETATTR mode failed") }
        try expect(attributes.type == 1 && attributes.size == UInt64(NFSv4Probe.dataBytes) && attributes.mode & 0o7777 == 0o600,
                   "GETATTR: type \(attributes.type), size \(attributes.size), mode \(String(attributes.mode, radix: 8))")
        print("nfs4-probe: SETATTR mode 600, GETATTR type 1 size \(attributes.size) mode 600 uid \(attributes.owner.map(String.init) ?? "?")")
        try close(file, stateid)
        guard keep == nil else { print("nfs4-probe: kept \(keep!)"); return }
        try namespace(root: root, file: file)
    }

    func readBack(_ file: [UInt8], stateid: NFSv4Stateid) throws {
        let matches = try onHandle("READ", file, operations: 1) { writer in
            writer.read(stateid, offset: 0, count: UInt32(NFSv4Probe.dataBytes))
        } read: { reader throws(XDRError) -> Int? in
            guard try reader.next(.read) == .ok else { return nil }
            let (_, data) = try reader.readData(limit: NFSv4Probe.dataBytes)
            guard data.count == NFSv4Probe.dataBytes else { return -data.count }
            return (0..<data.count).first(where: { data[$0] != NFSv4Probe.pattern($0) }) ?? data.count
        }
        try expect(matches == NFSv4Probe.dataBytes, "READ back: \(matches.map { $0 < 0 ? "\(-$0) bytes" : "differs at byte \($0)" } ?? "failed")")
        print("nfs4-probe: READ \(NFSv4Probe.dataBytes) B back, byte for byte the pattern")
    }

    func close(_ file: [UInt8], _ stateid: NFSv4Stateid) throws {
        let closed = try onHandle("CLOSE", file, operations: 1) { writer in writer.close(stateid) } read: { reader throws(XDRError) in
            try reader.next(.close) == .ok ? try reader.stateidResult() : nil
        }
        try expect(closed != nil, "CLOSE failed")
        print("nfs4-probe: CLOSE ok")
    }

    func verify(root: [UInt8], name: String) throws {
        let (stateid, file) = try open(in: root, name: Array(name.utf8), access: NFSv4ShareAccess.read, create: .none)
        defer { try? close(file, stateid) }
        try readBack(file, stateid: stateid)
    }
}

extension ProbeSteps {
    func namespace(root: [UInt8], file: [UInt8]) throws {
        let directory = self.directory, name = self.name
        let made = try onHandle("CREATE", root, operations: 2) { writer in
            directory.withUnsafeBytes { writer.create(.directory, name: $0, attributes: NFSv4SetAttributes(mode: 0o755)) }
            writer.getfh()
        } read: { reader throws(XDRError) -> [UInt8] in
            guard try reader.next(.create) == .ok else { return [] }
            _ = try reader.createResult()
            guard try reader.next(.getfh) == .ok else { return [] }
            return Array(try reader.handle())
        }.nonEmpty(or: "CREATE of a directory failed")
        print("nfs4-probe: CREATE directory ok")
        let found = try listing(root)
        try expect(found[name] == 1 && found[directory] == 2, "READDIR: the file and the directory are not both listed (\(found.count) names)")
        print("nfs4-probe: READDIR lists \(found.count) name(s), the file (regular) and the directory among them")
        let renamed = try onHandle("RENAME", root, operations: 5) { writer in
            writer.savefh()
            made.withUnsafeBytes { writer.putfh($0) }
            name.withUnsafeBytes { writer.rename($0, to: $0) }
            name.withUnsafeBytes { writer.lookup($0) }
            writer.getattr(.standard)
        } read: { reader throws(XDRError) -> UInt64? in
            guard try reader.next(.savefh) == .ok, try reader.next(.putfh) == .ok, try reader.next(.rename) == .ok else { return nil }
            _ = try reader.renameResult()
            guard try reader.next(.lookup) == .ok, try reader.next(.getattr) == .ok else { return nil }
            return try reader.attributes().size
        }
        try expect(renamed == UInt64(NFSv4Probe.dataBytes), "RENAME into the directory, then LOOKUP there: \(String(describing: renamed))")
        print("nfs4-probe: RENAME into the directory, LOOKUP finds it there with its \(renamed!) bytes")
        try expect(try lookupStatus(root, name) == .noent, "LOOKUP of the renamed name in its old directory did not answer NOENT")
        print("nfs4-probe: LOOKUP of the old name answers NOENT")
        try remove(made, name)
        try remove(root, directory)
        try expect(try lookupStatus(root, directory) == .noent, "the directory is still there after REMOVE")
        print("nfs4-probe: REMOVE of the file and the directory ok")
    }

    /// READDIR of the whole directory: name → nfs_ftype4.
    func listing(_ directory: [UInt8]) throws -> [[UInt8]: UInt32] {
        var found: [[UInt8]: UInt32] = [:]
        var cookie: UInt64 = 0, verifier: UInt64 = 0
        for _ in 0..<1000 {
            let page = try onHandle("READDIR", directory, operations: 1) { writer in
                writer.readdir(cookie: cookie, verifier: verifier, directoryBytes: 8192, replyBytes: 32768, .standard)
            } read: { reader throws(XDRError) -> (UInt64, [([UInt8], UInt32, UInt64)], Bool)? in
                guard try reader.next(.readdir) == .ok else { return nil }
                let verifier = try reader.readdirVerifier()
                var entries: [([UInt8], UInt32, UInt64)] = []
                while let entry = try reader.directoryEntry() { entries.append((Array(entry.name), entry.attributes.type, entry.cookie)) }
                return (verifier, entries, try reader.readdirEnd())
            }
            guard let page else { throw ProbeFailure("READDIR failed") }
            verifier = page.0
            for entry in page.1 { found[entry.0] = entry.1; cookie = entry.2 }
            if page.2 { return found }
            try expect(!page.1.isEmpty, "READDIR: an empty page that is not the end")
        }
        throw ProbeFailure("READDIR: no end after 1000 pages")
    }

    func lookupStatus(_ directory: [UInt8], _ name: [UInt8]) throws -> NFSv4Status {
        try onHandle("LOOKUP", directory, operations: 1) { writer in name.withUnsafeBytes { writer.lookup($0) } } read: { reader throws(XDRError) in
            try reader.next(.lookup)
        }
    }

    func remove(_ directory: [UInt8], _ name: [UInt8]) throws {
        let status = try onHandle("REMOVE", directory, operations: 1) { writer in name.withUnsafeBytes { writer.remove($0) } } read: { reader throws(XDRError) in
            let status = try reader.next(.remove)
            if status == .ok { _ = try reader.changeInfo() }
            return status
        }
        try expect(status == .ok, "REMOVE \(String(decoding: name, as: UTF8.self)): nfsstat4 \(status.rawValue)")
    }
}
