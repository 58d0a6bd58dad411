import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOSSL
import Shared
import TestSupport
import Testing
@testable import HubStore
@testable import TetherHub

/// A JSON object may name a key once: bodies that say two things are refused.
@Suite struct DuplicateKeyTests {
    /// Documents and the path of their first duplicate key (also StrictJSONTests' cases).
    static let cases: [(String, String?)] = [
        (#"{"a": 1, "b": [1, {"c": 2}], "d": {"e": {}}}"#, nil),
        (#"{"items": [], "items": [{"event": "1"}]}"#, "items"),
        (#"{"items": [{"auditID": "x", "stage": "s"}, {"auditID": "y", "auditID": "z"}]}"#, "items[1].auditID"),
        (#"{"items": [], "\u0069tems": []}"#, "items"),
        (#"{"a": {"b": {"c": 1, "c": 2}}, "a2": 1}"#, "a.b.c"),
        (#"[{"k": 1}, {"k": 1}]"#, nil),
        (#"{"s": "{\"x\": 1, \"x\": 2}"}"#, nil),  // inside a string: not keys
    ]

    @Test func theScannerFindsTheFirstDuplicateAtAnyDepthAndAfterUnescaping() throws {
        for (json, expected) in Self.cases {
            #expect(try JSONScanner.firstDuplicateKey(in: Data(json.utf8)) == expected, "\(json)")
        }
        #expect(throws: JSONScanner.Malformed.self) { try JSONScanner.firstDuplicateKey(in: Data(#"{"a": 1} trailing"#.utf8)) }
        // The real API server's bodies have none.
        for url in try Fixtures.files(in: "audit/webhook") {
            #expect(try JSONScanner.firstDuplicateKey(in: Data(contentsOf: url)) == nil, "\(url.lastPathComponent)")
        }
    }

    @Test func theAdminAPIRefusesABodyWithAKeyTwice() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let hub = try await TestHub.start(dataDir: dir.sub("hub"))
        _ = try await hub.core.addCluster(ClusterName("prod-eu"), labels: [:])
        _ = try await hub.core.addCluster(ClusterName("staging"), labels: [:])
        let credentials = try JSONDecoder().decode(AdminCredentials.self, from: Data(contentsOf: URL(fileURLWithPath: dir.sub("hub/admin-credentials.json"))))
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(credentials.caCertificate.utf8)))
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        func post(_ body: String) async throws -> (Int, String) {
            var request = HTTPClientRequest(url: credentials.server + "/v1/tokens")
            request.method = .POST
            request.headers.add(name: "Authorization", value: "Bearer \(credentials.token)")
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
            let response = try await http.execute(request, timeout: .seconds(30))
            return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 20)))
        }
        let (code, text) = try await post(#"{"cluster": "staging", "cluster": "prod-eu"}"#)
        #expect(code == 400)
        #expect(text.contains("'cluster' more than once"), "\(text)")
        #expect(try await hub.core.database.tokens().isEmpty, "no token for either cluster")
        // Control: the same call with the key once.
        let (created, _) = try await post(#"{"cluster": "prod-eu"}"#)
        #expect(created == 201)
        try await http.shutdown()
        try await hub.stop()
    }
}
