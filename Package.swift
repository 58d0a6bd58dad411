// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Tether",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tether-hub", targets: ["HubMain"]),
        .executable(name: "tether-agent", targets: ["AgentMain"]),
        .executable(name: "tether-bench-audit", targets: ["AuditBenchmark"]),
        .executable(name: "tether-bench-fanout", targets: ["FanoutBenchmark"]),
        .executable(name: "tether-bench-access", targets: ["AccessBenchmark"]),
        .executable(name: "tether-bench-report", targets: ["ReportBenchmark"]),
    ],
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-async-algorithms", from: "1.1.4"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.7.1"),
    ],
    targets: [
        .target(
            name: "Shared",
            dependencies: [
                "CZlib",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/Shared",
            exclude: ["Wire/tether.proto"]
        ),
        // The hub's store: the only target that links GRDB. Its API is async
        // (GRDB's async reads and writes), so no caller blocks the cooperative pool.
        .target(
            name: "HubStore",
            dependencies: [
                "Shared",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Hub/HubStore"
        ),
        // Everything else of the hub: gateway, CA, policy, audit, admin API, CLI.
        .target(
            name: "TetherHub",
            dependencies: [
                "Shared", "HubStore",
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // ID tokens of the company's identity provider (sign-in).
                .product(name: "JWTKit", package: "jwt-kit"),
            ],
            path: "Sources/Hub/TetherHub"
        ),
        .executableTarget(name: "HubMain", dependencies: ["TetherHub"], path: "Sources/Hub/Main"),
        .target(
            name: "TetherAgent",
            dependencies: [
                "Shared",
                "CZlib",
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/Agent/TetherAgent"
        ),
        .executableTarget(
            name: "AgentMain", dependencies: ["TetherAgent"], path: "Sources/Agent/Main", exclude: ["tether-agent.order.gz"],
            // The agent runs in every cluster, so its idle memory counts (issue #11). In a
            // release build on Linux it is linked by lld with packed relative relocations (no 3.6 MiB relocation table read at start) and
            // without exporting its 56,000 symbols (no 3 MiB symbol table read by the loader),
            // and `scripts/build-release` adds the order that lays out the code an idle agent
            // runs together (tether-agent.order.gz).
            linkerSettings: [.unsafeFlags(agentReleaseLinkFlags, .when(platforms: [.linux], configuration: .release))]
        ),
        .systemLibrary(name: "CZlib", path: "Benchmarks/CZlib", providers: [.apt(["zlib1g-dev"])]),
        .executableTarget(
            name: "AuditBenchmark",
            dependencies: [
                "BenchSupport",
                "Shared", "CZlib",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Benchmarks/AuditBenchmark"
        ),
        .executableTarget(
            name: "FanoutBenchmark",
            dependencies: [
                "BenchSupport",
                "Shared", "TetherAgent",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            path: "Benchmarks/FanoutBenchmark"
        ),
        .executableTarget(
            name: "AccessBenchmark",
            dependencies: [
                "BenchSupport",
                "Shared", "KubeEmulator",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Benchmarks/AccessBenchmark"
        ),
        .target(
            name: "BenchSupport",
            dependencies: ["Shared"],
            path: "Benchmarks/BenchSupport"
        ),
        .executableTarget(
            name: "ReportBenchmark",
            dependencies: ["BenchSupport", "Shared", "HubStore"],
            path: "Benchmarks/ReportBenchmark"
        ),
        .target(
            name: "TestSupport",
            dependencies: [
                "Shared",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/TestSupport"
        ),
        .target(
            name: "KubeEmulator",
            dependencies: [
                "TestSupport", "Shared", "CZlib",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            path: "Tests/KubeEmulator"
        ),
        .testTarget(
            name: "KubeEmulatorTests",
            dependencies: [
                "KubeEmulator", "TestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Tests/KubeEmulatorTests"
        ),
        .testTarget(
            name: "TetherTests",
            dependencies: ["Shared", "HubStore", "TetherHub", "TetherAgent", "TestSupport", "KubeEmulator",
                           .product(name: "JWTKit", package: "jwt-kit")],
            path: "Tests/TetherTests"
        ),
    ]
)

/// Release link of tether-agent on Linux (see the AgentMain target). The order file
/// (`scripts/agent-layout` writes it, compressed; `scripts/build-release` unpacks it and
/// passes `--symbol-ordering-file` for the agent's link) lays out single functions only
/// when the build has `-Xswiftc -Xfrontend -Xswiftc -function-sections`, and the Swift
/// runtime and Foundation are linked in only with `--static-swift-stdlib` (a compile
/// option too): both are what `scripts/build-release` and the Containerfile pass.
var agentReleaseLinkFlags: [String] {
    ["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic"]
}
