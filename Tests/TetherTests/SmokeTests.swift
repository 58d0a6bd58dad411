import Testing
@testable import Hub
@testable import Agent
@testable import Shared
@Test func smoke() { #expect(TetherVersion.current == "0.1.0") }
