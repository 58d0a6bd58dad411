import Foundation
import Shared
import TestSupport
import Testing
@testable import TetherAgent

/// Drift reports outlive the channel that was reading them.
@Suite struct DriftReportsTests {
    @Test func reportsReachTheNextChannelAfterAReaderIsCancelled() async throws {
        let reports = DriftReports()
        let result = AppliedResult(bundle: "b", object: "ClusterRole/view", state: .drifted, message: "reverted a change made in the cluster")

        // A channel's reader, waiting when its channel closes.
        let first = Task { await reports.next() }
        first.cancel()
        #expect(await first.value.isEmpty, "a cancelled reader takes nothing")

        // Repairs made while no channel is up wait for the next one.
        reports.add([result])
        let second = Task { await reports.next() }
        #expect(await second.value == [result])

        // And the next reader after that is woken by a new report.
        let third = Task { await reports.next() }
        reports.add([result, result])
        #expect(await third.value == [result, result])
    }

    @Test func onlyTheNewestReportsAreKeptWhileNobodyReads() async {
        let reports = DriftReports()
        for i in 0..<(DriftReports.limit + 5) {
            reports.add([AppliedResult(bundle: "b", object: "ClusterRole/r\(i)", state: .drifted, message: nil)])
        }
        let taken = await reports.next()
        #expect(taken.count == DriftReports.limit)
        #expect(taken.last?.object == "ClusterRole/r\(DriftReports.limit + 4)")
    }
}
