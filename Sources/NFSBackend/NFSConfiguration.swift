import FUSEWire

// What an NFS device is pointed at and what it may hold. Parsed once at start-up; nothing here is
// touched by the data path.

/// `nfs://HOST/EXPORT?version=3[&nfsport=N][&mountport=N]`, the form libnfs's tools take.
public struct NFSURL: Equatable, Sendable, CustomStringConvertible {
    public var host: String
    /// The export's path on the server (v3 mounts by path; v4 would use the pseudo path).
    public var exportPath: String
    public var version: Int
    /// NFSv4's minor version (0 or 1); 0 for v3. `version=4` means 4.1.
    public var minorVersion: Int = 0
    /// The NFS service's TCP port (the portmapper is never asked for it: 2049 is the standard).
    public var nfsPort: Int
    /// The MOUNT service's TCP port; 0 = ask the server's portmapper.
    public var mountPort: Int

    public init(host: String, exportPath: String, version: Int = 3, nfsPort: Int = 2049, mountPort: Int = 0) {
        self.host = host
        self.exportPath = exportPath
        self.version = version
        self.nfsPort = nfsPort
        self.mountPort = mountPort
    }

    public var description: String {
        var text = "nfs://\(host)\(exportPath)?version=\(versionText)"
        if nfsPort != 2049 { text += "&nfsport=\(nfsPort)" }
        if mountPort != 0 { text += "&mountport=\(mountPort)" }
        return text
    }

    /// "3", "4.0" or "4.1".
    public var versionText: String { version == 3 ? "3" : "4.\(minorVersion)" }

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Parses and checks every part; unknown parameters are refused rather than ignored.
    public static func parse(_ text: String) throws(ParseError) -> NFSURL {
        let prefix = "nfs://"
        guard text.hasPrefix(prefix) else { throw ParseError(description: "NFS URL must start with nfs:// (got '\(text)')") }
        let rest = text.dropFirst(prefix.count)
        let pathAndQuery = rest.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let authorityAndPath = pathAndQuery[0]
        guard let slash = authorityAndPath.firstIndex(of: "/") else {
            throw ParseError(description: "NFS URL has no export path: '\(text)'")
        }
        let host = String(authorityAndPath[..<slash])
        let path = String(authorityAndPath[slash...])
        guard !host.isEmpty, host.utf8.count <= 255 else { throw ParseError(description: "NFS URL has no server: '\(text)'") }
        guard path.utf8.count <= 1024 else { throw ParseError(description: "NFS export path longer than 1024 bytes") }
        var url = NFSURL(host: host, exportPath: path)
        if pathAndQuery.count == 2 {
            for parameter in pathAndQuery[1].split(separator: "&") {
                let pair = parameter.split(separator: "=", maxSplits: 1)
                if pair.count == 2, pair[0] == "version" {
                    switch pair[1] {
                    case "3": url.version = 3
                    case "4", "4.1": (url.version, url.minorVersion) = (4, 1)
                    case "4.0": (url.version, url.minorVersion) = (4, 0)
                    default: throw ParseError(description: "NFS version '\(pair[1])' is not known (3, 4.0, 4.1; 4 means 4.1)")
                    }
                    continue
                }
                guard pair.count == 2, let value = Int(pair[1]) else {
                    throw ParseError(description: "NFS URL parameter '\(parameter)' is not name=number")
                }
                switch pair[0] {
                case "nfsport":
                    guard (1...65_535).contains(value) else { throw ParseError(description: "nfsport \(value) out of range") }
                    url.nfsPort = value
                case "mountport":
                    guard (1...65_535).contains(value) else { throw ParseError(description: "mountport \(value) out of range") }
                    url.mountPort = value
                default:
                    throw ParseError(description: "unknown NFS URL parameter '\(pair[0])' (known: version, nfsport, mountport)")
                }
            }
        }
        return url
    }
}

public struct NFSConfiguration: Sendable {
    public var url: NFSURL
    /// How long names and attributes stay valid in the guest (NFS's own default is 3–60 s; a
    /// shorter time sees other clients' changes sooner).
    public var validity: CacheValidity
    /// FOPEN flags for every open (0: page cache kept until the next open, close-to-open as NFS).
    public var openFlags: UInt32
    /// Inodes the guest may know at once (one file handle each).
    public var nodesMax: Int
    /// Files and directories the guest may have open at once.
    public var openFilesMax: Int
    /// A request not answered in this time fails with EIO (and the connection is re-made).
    public var requestTimeoutMilliseconds: Int
    /// Reconnect attempts start this far apart and double up to `reconnectBackoffMillisecondsMax`.
    /// TCP connections per request queue (calls go round robin over those that are up).
    public var connectionsPerQueue: Int
    /// Each queue's copy of its uncommitted UNSTABLE writes (NFSJournal.swift); 0 disables it.
    public var journalBytesPerQueue: Int
    public var reconnectBackoffMillisecondsMin: Int = 50
    public var reconnectBackoffMillisecondsMax: Int = 2000

    public init(url: NFSURL, validity: CacheValidity = CacheValidity(seconds: 1), openFlags: UInt32 = 0,
                nodesMax: Int = DeviceTableDefaults.nodesMax, openFilesMax: Int = DeviceTableDefaults.openFilesMax,
                requestTimeoutMilliseconds: Int = NFSConfiguration.requestTimeoutMillisecondsDefault,
                connectionsPerQueue: Int = 1, journalBytesPerQueue: Int = NFSConfiguration.journalMegabytesDefault << 20) {
        precondition(nodesMax >= 16 && nodesMax <= 1 << 24)
        // A slot records its connection in 8 bits, and `expire` keeps them in a 64-bit set.
        precondition(connectionsPerQueue >= 1 && connectionsPerQueue <= NFSConfiguration.connectionsPerQueueMax)
        precondition(openFilesMax >= 16 && openFilesMax <= 1 << 24)
        precondition(Self.requestTimeoutMillisecondsRange.contains(requestTimeoutMilliseconds))
        self.url = url
        self.validity = validity
        self.openFlags = openFlags
        self.nodesMax = nodesMax
        self.openFilesMax = openFilesMax
        self.requestTimeoutMilliseconds = requestTimeoutMilliseconds
        self.connectionsPerQueue = connectionsPerQueue
        precondition(journalBytesPerQueue >= 0 && journalBytesPerQueue <= 1 << 32)
        self.journalBytesPerQueue = journalBytesPerQueue
    }

    public static let connectionsPerQueueMax = 16
    public static let requestTimeoutMillisecondsDefault = 30_000
    public static let requestTimeoutMillisecondsRange = 100...3_600_000
    public static let journalMegabytesDefault = 16
    public static let journalMegabytesMax = 4096
}
