import Foundation
import Shared
import Testing
@testable import HubStore
@testable import TetherHub

/// Label selectors and bundle files: what is accepted and how refusals read.
@Suite struct PolicyParsingTests {
    typealias R = LabelSelector.Requirement

    static let labels = ["env": "prod", "region": "eu", "tier": "gold"]

    static let selectorCases: [(LabelSelector, Bool, String)] = [
        (LabelSelector(), true, "empty selector matches everything"),
        (LabelSelector(matchLabels: ["env": "prod"]), true, "matchLabels equal"),
        (LabelSelector(matchLabels: ["env": "dev"]), false, "matchLabels different value"),
        (LabelSelector(matchLabels: ["team": "a"]), false, "matchLabels missing key"),
        (LabelSelector(matchLabels: ["env": "prod", "region": "eu"]), true, "all matchLabels"),
        (LabelSelector(matchExpressions: [R(key: "region", operator: .in, values: ["eu", "us"])]), true, "In"),
        (LabelSelector(matchExpressions: [R(key: "region", operator: .in, values: ["us"])]), false, "In, other value"),
        (LabelSelector(matchExpressions: [R(key: "zone", operator: .in, values: ["a"])]), false, "In, key missing"),
        (LabelSelector(matchExpressions: [R(key: "region", operator: .notIn, values: ["us"])]), true, "NotIn"),
        (LabelSelector(matchExpressions: [R(key: "region", operator: .notIn, values: ["eu"])]), false, "NotIn, value listed"),
        (LabelSelector(matchExpressions: [R(key: "zone", operator: .notIn, values: ["a"])]), true, "NotIn, key missing matches"),
        (LabelSelector(matchExpressions: [R(key: "tier", operator: .exists)]), true, "Exists"),
        (LabelSelector(matchExpressions: [R(key: "zone", operator: .exists)]), false, "Exists, missing"),
        (LabelSelector(matchExpressions: [R(key: "zone", operator: .doesNotExist)]), true, "DoesNotExist"),
        (LabelSelector(matchExpressions: [R(key: "env", operator: .doesNotExist)]), false, "DoesNotExist, present"),
        (LabelSelector(matchLabels: ["env": "prod"], matchExpressions: [R(key: "region", operator: .in, values: ["us"])]), false, "labels and expressions AND"),
    ]

    @Test(arguments: selectorCases.indices)
    func selectorMatching(_ i: Int) throws {
        let (selector, expected, name) = Self.selectorCases[i]
        try selector.validate()
        #expect(selector.matches(Self.labels) == expected, "\(name)")
    }

    @Test func selectorValidation() {
        let bad = [
            LabelSelector(matchExpressions: [R(key: "a", operator: .in, values: [])]),
            LabelSelector(matchExpressions: [R(key: "a", operator: .notIn)]),
            LabelSelector(matchExpressions: [R(key: "a", operator: .exists, values: ["x"])]),
            LabelSelector(matchExpressions: [R(key: "bad key", operator: .exists)]),
            LabelSelector(matchLabels: ["k": "bad value!"]),
        ]
        for selector in bad {
            #expect(throws: TetherError.self) { try selector.validate() }
        }
    }

    static let good = """
        apiVersion: tether.dev/v1
        kind: PolicyBundle
        metadata: {name: prod-readonly}
        spec:
          clusterSelector:
            matchLabels: {env: prod}
            matchExpressions: [{key: region, operator: In, values: [eu, us]}]
          resources:
            - apiVersion: v1
              kind: Namespace
              metadata: {name: team-a}
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: ClusterRole
              metadata: {name: readonly}
              rules: [{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}]
            - apiVersion: rbac.authorization.k8s.io/v1
              kind: RoleBinding
              metadata: {name: readonly, namespace: team-a}
              roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: readonly}
              subjects: [{kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}]
        """

    @Test func parsesABundleAndMarksWhatTetherOwns() throws {
        let bundles = try PolicyParser.parse(yaml: Self.good, file: "prod.yaml")
        let bundle = try #require(bundles.first)
        #expect(bundle.name == "prod-readonly")
        #expect(bundle.clusterSelector.matches(["env": "prod", "region": "us"]))
        #expect(!bundle.clusterSelector.matches(["env": "prod", "region": "ap"]))
        #expect(bundle.resources.map(\.key) == ["Namespace/team-a", "ClusterRole/readonly", "RoleBinding/team-a/readonly"])
        let object = try JSONSerialization.jsonObject(with: bundle.resources[1].json) as! [String: Any]
        let metadata = object["metadata"] as! [String: Any]
        #expect((metadata["labels"] as? [String: String])?["app.kubernetes.io/managed-by"] == "tether")
        #expect((metadata["annotations"] as? [String: String])?["tether.dev/bundle"] == "prod-readonly")
    }

    @Test(arguments: [
        ("kind: PolicyBundle\n  bad: [indent", "line 2", "invalid YAML"),
        (good.replacingOccurrences(of: "kind: Namespace", with: "kind: Secret"), "resources[0] (Secret/team-a)", "kind Secret is not allowed"),
        (good.replacingOccurrences(of: "metadata: {name: readonly}\n", with: "metadata: {}\n"), "resources[1] (ClusterRole/?)", "metadata.name is required"),
        (good.replacingOccurrences(of: "{name: readonly, namespace: team-a}", with: "{name: readonly}"), "resources[2] (RoleBinding/readonly)", "metadata.namespace is required"),
        (good.replacingOccurrences(of: "{name: team-a}", with: "{name: Team_A}"), "resources[0] (Namespace/Team_A)", "RFC 1123 label"),
        (good.replacingOccurrences(of: "apiVersion: v1\n", with: "apiVersion: v2\n"), "resources[0]", "apiVersion must be v1"),
        (good.replacingOccurrences(of: "operator: In", with: "operator: Near"), "bundle prod-readonly", "clusterSelector"),
        (good.replacingOccurrences(of: "  clusterSelector:\n    matchLabels: {env: prod}\n    matchExpressions: [{key: region, operator: In, values: [eu, us]}]\n", with: ""), "bundle prod-readonly", "clusterSelector is required"),
    ])
    func refusesWithFileObjectAndLine(_ yaml: String, _ names: String, _ problem: String) {
        let error = #expect(throws: TetherError.self) { try PolicyParser.parse(yaml: yaml, file: "bundles/prod.yaml") }
        let message = error?.message ?? ""
        #expect(message.hasPrefix("bundles/prod.yaml: line "), "\(message)")
        #expect(message.contains(names), "\(message)")
        #expect(message.contains(problem), "\(message)")
    }

    @Test func objectErrorsPointAtTheObjectsLine() {
        let yaml = Self.good.replacingOccurrences(of: "kind: ClusterRole\n", with: "kind: Deployment\n")
        let error = #expect(throws: TetherError.self) { try PolicyParser.parse(yaml: yaml, file: "f.yaml") }
        #expect(error?.message.hasPrefix("f.yaml: line 12:") == true, "\(error?.message ?? "")")
    }
}
