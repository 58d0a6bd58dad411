import Testing
@testable import KubeEmulator

@Suite struct FieldManagerTests {
    let manager = FieldManager(type: .clusterRoles)
    let rulesGet: JSON = ["apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": ["name": "r"],
                          "rules": [["apiGroups": [""], "resources": ["pods"], "verbs": ["get"]]]]
    var rulesList: JSON {
        var o = rulesGet
        o["rules"] = [["apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]]]
        return o
    }

    @Test func atomicRulesAreOneField() {
        let set = ApplySchema(.clusterRoles).fieldSet(rulesGet)
        #expect(set == [FieldPath(fields: "rules")])
        #expect(FieldsV1.encode(set) == ["f:rules": [:]])
    }

    @Test func labelsAndSetListsAreOwnedPerItem() {
        let object: JSON = ["metadata": ["name": "x", "labels": ["a": "1"], "finalizers": ["f1"]], "data": ["k": "v"]]
        let set = ApplySchema(.configMaps).fieldSet(object)
        #expect(set == [FieldPath(fields: "metadata", "labels", "a"), FieldPath([.field("metadata"), .field("finalizers"), .value("f1")]),
                        FieldPath(fields: "data", "k")])
        let encoded = FieldsV1.encode(set)
        #expect(encoded == ["f:metadata": ["f:labels": ["f:a": [:]], "f:finalizers": ["v:\"f1\"": [:]]], "f:data": ["f:k": [:]]])
        #expect(FieldsV1.decode(encoded) == set)
    }

    @Test func createRecordsAnUpdateEntry() {
        let entries = manager.update(old: nil, new: rulesGet, entries: [], manager: "curl", now: "t0")
        #expect(entries == [ManagedFieldsEntry(manager: "curl", operation: .update, apiVersion: "rbac.authorization.k8s.io/v1", time: "t0",
                                               fields: [FieldPath(fields: "rules")])])
    }

    @Test func applyChangingAnotherManagersFieldConflicts() throws {
        let entries = manager.update(old: nil, new: rulesGet, entries: [], manager: "curl", now: "t0")
        do {
            _ = try manager.apply(live: rulesGet, entries: entries, config: rulesList, manager: "tether", force: false, now: "t1")
            Issue.record("expected a conflict")
        } catch {
            #expect(error.code == 409)
            #expect(error.status["message"] == "Apply failed with 1 conflict: conflict with \"curl\" using rbac.authorization.k8s.io/v1: .rules")
            #expect(error.status["details"] == ["causes": [["reason": "FieldManagerConflict", "message": "conflict with \"curl\" using rbac.authorization.k8s.io/v1", "field": ".rules"]]])
        }
    }

    @Test func forceTakesOwnership() throws {
        let entries = manager.update(old: nil, new: rulesGet, entries: [], manager: "curl", now: "t0")
        let result = try manager.apply(live: rulesGet, entries: entries, config: rulesList, manager: "tether", force: true, now: "t1")
        #expect(result.object["rules"] == rulesList["rules"])
        #expect(result.entries.map(\.manager) == ["tether"])
        #expect(result.entries[0].operation == .apply)
    }

    @Test func applyingTheSameValueSharesOwnershipWithoutConflict() throws {
        let entries = manager.update(old: nil, new: rulesGet, entries: [], manager: "curl", now: "t0")
        let result = try manager.apply(live: rulesGet, entries: entries, config: rulesGet, manager: "tether", force: false, now: "t1")
        #expect(Set(result.entries.map(\.manager)) == ["curl", "tether"])
        #expect(result.entries.allSatisfy { $0.fields == [FieldPath(fields: "rules")] })
    }

    @Test func conflictBetweenTwoAppliersNamesTheManagerOnly() throws {
        let first = try manager.apply(live: nil, entries: [], config: rulesGet, manager: "a", force: false, now: "t0")
        do {
            _ = try manager.apply(live: first.object, entries: first.entries, config: rulesList, manager: "b", force: false, now: "t1")
            Issue.record("expected a conflict")
        } catch {
            #expect(error.status["message"] == "Apply failed with 1 conflict: conflict with \"a\": .rules")
        }
    }

    @Test func fieldsDroppedFromAnApplyAreRemovedUnlessSomeoneElseOwnsThem() throws {
        let cm = FieldManager(type: .configMaps)
        let v1: JSON = ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "c", "labels": ["a": "1", "b": "2"]], "data": ["x": "1", "y": "2"]]
        let applied = try cm.apply(live: nil, entries: [], config: v1, manager: "tether", force: false, now: "t0")
        // Someone else edits .data.y by hand: now both own it.
        var edited = applied.object
        edited[path: ["data", "y"]] = "hand"
        let entries = cm.update(old: applied.object, new: edited, entries: applied.entries, manager: "kubectl-edit", now: "t1")
        #expect(entries.first { $0.manager == "tether" }?.fields.contains(FieldPath(fields: "data", "y")) == false)
        let v2: JSON = ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "c", "labels": ["a": "1"]], "data": ["x": "1"]]
        let result = try cm.apply(live: edited, entries: entries, config: v2, manager: "tether", force: false, now: "t2")
        #expect(result.object[path: ["metadata", "labels"]] == ["a": "1"])
        #expect(result.object["data"] == ["x": "1", "y": "hand"])
    }

    @Test func conflictsAreReportedPerManagerAndPath() throws {
        let cm = FieldManager(type: .configMaps)
        let base: JSON = ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "c"], "data": ["x": "1", "y": "2"]]
        let entries = cm.update(old: nil, new: base, entries: [], manager: "kubectl-edit", now: "t0")
        let config: JSON = ["apiVersion": "v1", "kind": "ConfigMap", "metadata": ["name": "c"], "data": ["x": "9", "y": "9"]]
        do {
            _ = try cm.apply(live: base, entries: entries, config: config, manager: "tether", force: false, now: "t1")
            Issue.record("expected a conflict")
        } catch {
            #expect(error.status["message"] == "Apply failed with 2 conflicts: conflicts with \"kubectl-edit\" using v1:\n- .data.x\n- .data.y")
            #expect(error.status["details"]?["causes"]?.arrayValue?.count == 2)
        }
    }
}
