import Foundation
import KubeEmulator
import TestSupport
import Testing

@Suite struct DiscoveryTests {
    @Test func servesTheCapturedDiscoveryDocuments() async throws {
        let files = try Fixtures.files(in: "kube/discovery")
        #expect(files.count >= 7)
        try await withEmulator { _, client in
            for file in files {
                let path = "/" + file.lastPathComponent.dropLast(5).replacingOccurrences(of: "_", with: "/")
                let expected = try JSON.parse(Data(contentsOf: file))
                let got = try await client.json("GET", path)
                #expect(got.code == 200, "\(path)")
                #expect(got.json == expected, "\(path)")
            }
        }
    }

    @Test func rejectsAWrongToken() async throws {
        try await withEmulator { _, client in
            let (code, data) = try await client.send("GET", "/api/v1/namespaces", token: "wrong")
            #expect(code == 401)
            let status = try JSON.parse(data)
            #expect(status["reason"] == "Unauthorized")
            #expect(status["code"] == 401)
        }
    }

    @Test func unknownPathIs404Status() async throws {
        try await withEmulator { _, client in
            let got = try await client.json("GET", "/apis/nosuch.example.com/v1/things")
            #expect(got.code == 404)
            #expect(got.json["message"] == "the server could not find the requested resource")
        }
    }
}
