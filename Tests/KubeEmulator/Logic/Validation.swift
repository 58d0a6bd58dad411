import Foundation

/// Defaulting and validation the real API server does before storing, for the served kinds.
enum Admission {
    static let rbacGroup = "rbac.authorization.k8s.io"

    /// Fills the defaults the real server fills (namespace label and finalizer, secret type,
    /// RBAC subject API groups, admission policy defaults).
    static func applyDefaults(_ type: ResourceType, _ object: inout JSON) {
        let name = object[path: ["metadata", "name"]]?.string ?? ""
        switch type {
        case .namespaces:
            object[path: ["metadata", "labels", "kubernetes.io/metadata.name"]] = .string(name)
            if object[path: ["spec", "finalizers"]] == nil { object[path: ["spec", "finalizers"]] = ["kubernetes"] }
            if object[path: ["status", "phase"]] == nil { object[path: ["status", "phase"]] = "Active" }
        case .secrets:
            if object["type"] == nil || object["type"] == .string("") { object["type"] = "Opaque" }
            if let stringData = object["stringData"]?.objectValue {
                var data = object["data"]?.objectValue ?? [:]
                for (k, v) in stringData { data[k] = .string(Data((v.string ?? "").utf8).base64EncodedString()) }
                object["data"] = .object(data)
                object["stringData"] = nil
            }
        case .roleBindings, .clusterRoleBindings:
            if var subjects = object["subjects"]?.arrayValue {
                for i in subjects.indices {
                    let kind = subjects[i]["kind"]?.string
                    if (kind == "User" || kind == "Group"), (subjects[i]["apiGroup"]?.string ?? "").isEmpty { subjects[i]["apiGroup"] = .string(rbacGroup) }
                }
                object["subjects"] = .array(subjects)
            }
        case .pods:
            // There is no scheduler or kubelet: a pod runs as soon as it is stored
            // (what a kubelet would report once its containers started).
            let now = ObjectStore.now()
            let containers = object[path: ["spec", "containers"]]?.arrayValue ?? []
            if object[path: ["status", "phase"]] == nil { object["status"] = [
                "phase": "Running", "podIP": "10.244.0.10", "hostIP": "172.18.0.2", "startTime": .string(now), "qosClass": "BestEffort",
                "conditions": [["type": "Ready", "status": "True", "lastTransitionTime": .string(now)]],
                "containerStatuses": .array(containers.map { c in
                    ["name": c["name"] ?? "", "image": c["image"] ?? "", "ready": true, "started": true, "restartCount": 0,
                     "state": ["running": ["startedAt": .string(now)]]]
                }),
            ] }
            if object[path: ["spec", "restartPolicy"]] == nil { object[path: ["spec", "restartPolicy"]] = "Always" }
        case .validatingAdmissionPolicies:
            if object[path: ["spec", "failurePolicy"]] == nil { object[path: ["spec", "failurePolicy"]] = "Fail" }
            defaultMatchResources(&object, ["spec", "matchConstraints"])
        case .validatingAdmissionPolicyBindings:
            defaultMatchResources(&object, ["spec", "matchResources"])
        default: break
        }
    }

    private static func defaultMatchResources(_ object: inout JSON, _ path: [String]) {
        guard var match = object[path: path], match.objectValue != nil else { return }
        if match["matchPolicy"] == nil { match["matchPolicy"] = "Equivalent" }
        if match["namespaceSelector"] == nil { match["namespaceSelector"] = .object([:]) }
        if match["objectSelector"] == nil { match["objectSelector"] = .object([:]) }
        for listName in ["resourceRules", "excludeResourceRules"] {
            if var rules = match[listName]?.arrayValue {
                for i in rules.indices where rules[i]["scope"] == nil { rules[i]["scope"] = "*" }
                match[listName] = .array(rules)
            }
        }
        object[path: path] = match
    }

    /// The 422 the real server gives for this object, if any.
    static func validate(_ type: ResourceType, _ object: JSON, old: JSON?) throws(EmulatorError) {
        let name = object[path: ["metadata", "name"]]?.string ?? ""
        var errors = nameErrors(type, name)
        switch type {
        case .roleBindings, .clusterRoleBindings:
            errors += bindingErrors(object, namespaced: type == .roleBindings)
            if let old, old["roleRef"] != object["roleRef"] {
                let r = object["roleRef"]
                errors.append(FieldError(
                    reason: "FieldValueInvalid",
                    message: "Invalid value: rbac.RoleRef{APIGroup:\"\(r?["apiGroup"]?.string ?? "")\", Kind:\"\(r?["kind"]?.string ?? "")\", Name:\"\(r?["name"]?.string ?? "")\"}: cannot change roleRef",
                    field: "roleRef"))
            }
        case .roles, .clusterRoles:
            for (i, rule) in (object["rules"]?.arrayValue ?? []).enumerated() {
                let p = "rules[\(i)]"
                if (rule["verbs"]?.arrayValue ?? []).isEmpty { errors.append(.required("\(p).verbs", "verbs must contain at least one value")) }
                if (rule["nonResourceURLs"]?.arrayValue ?? []).isEmpty {
                    if (rule["apiGroups"]?.arrayValue ?? []).isEmpty { errors.append(.required("\(p).apiGroups", "resource rules must supply at least one api group")) }
                    if (rule["resources"]?.arrayValue ?? []).isEmpty { errors.append(.required("\(p).resources", "resource rules must supply at least one resource")) }
                }
            }
        case .pods:
            let containers = object[path: ["spec", "containers"]]?.arrayValue ?? []
            if containers.isEmpty { errors.append(.required("spec.containers")) }
            for (i, c) in containers.enumerated() {
                if (c["name"]?.string ?? "").isEmpty { errors.append(.required("spec.containers[\(i)].name")) }
                if (c["image"]?.string ?? "").isEmpty { errors.append(.required("spec.containers[\(i)].image")) }
            }
        case .validatingAdmissionPolicyBindings:
            if (object[path: ["spec", "policyName"]]?.string ?? "").isEmpty { errors.append(.required("spec.policyName")) }
            let actions = object[path: ["spec", "validationActions"]]?.arrayValue ?? []
            if actions.isEmpty { errors.append(.required("spec.validationActions", "at least one validation action is required")) }
            for (i, a) in actions.enumerated() where !["Deny", "Warn", "Audit"].contains(a.string ?? "") {
                errors.append(.notSupported("spec.validationActions[\(i)]", a.string ?? "", ["Audit", "Deny", "Warn"]))
            }
        case .validatingAdmissionPolicies:
            for (i, v) in (object[path: ["spec", "validations"]]?.arrayValue ?? []).enumerated() where (v["expression"]?.string ?? "").isEmpty {
                errors.append(.required("spec.validations[\(i)].expression"))
            }
            if let policy = object[path: ["spec", "failurePolicy"]]?.string, !["Fail", "Ignore"].contains(policy) {
                errors.append(.notSupported("spec.failurePolicy", policy, ["Fail", "Ignore"]))
            }
        default: break
        }
        if !errors.isEmpty { throw EmulatorError.invalid(type, name, errors) }
    }

    static func nameErrors(_ type: ResourceType, _ name: String) -> [FieldError] {
        if name.isEmpty { return [.required("metadata.name", "name or generateName is required")] }
        return nameMessages(type.nameRule, name).map { .invalid("metadata.name", name, $0) }
    }

    static func nameMessages(_ rule: NameRule, _ name: String) -> [String] {
        switch rule {
        case .pathSegment:
            if name == "." || name == ".." { return ["may not be '\(name)'"] }
            return ["/", "%"].filter { name.contains($0) }.map { "may not contain '\($0)'" }
        case .dns1123Label:
            var messages: [String] = []
            if name.count > 63 { messages.append("must be no more than 63 characters") }
            if name.range(of: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", options: .regularExpression) == nil {
                messages.append("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
            }
            return messages
        case .dns1123Subdomain:
            var messages: [String] = []
            if name.count > 253 { messages.append("must be no more than 253 characters") }
            if name.range(of: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", options: .regularExpression) == nil {
                messages.append("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
            }
            return messages
        }
    }

    private static func bindingErrors(_ object: JSON, namespaced: Bool) -> [FieldError] {
        var errors: [FieldError] = []
        let roleRef = object["roleRef"] ?? .object([:])
        let apiGroup = roleRef["apiGroup"]?.string ?? ""
        if apiGroup != rbacGroup { errors.append(.notSupported("roleRef.apiGroup", apiGroup, [rbacGroup])) }
        let kind = roleRef["kind"]?.string ?? ""
        let kinds = namespaced ? ["Role", "ClusterRole"] : ["ClusterRole"]
        if !kinds.contains(kind) { errors.append(.notSupported("roleRef.kind", kind, kinds)) }
        let roleName = roleRef["name"]?.string ?? ""
        if roleName.isEmpty { errors.append(.required("roleRef.name")) } else {
            errors += nameMessages(.pathSegment, roleName).map { .invalid("roleRef.name", roleName, $0) }
        }
        for (i, subject) in (object["subjects"]?.arrayValue ?? []).enumerated() {
            let p = "subjects[\(i)]"
            let name = subject["name"]?.string ?? ""
            let group = subject["apiGroup"]?.string ?? ""
            if name.isEmpty { errors.append(.required("\(p).name")) }
            switch subject["kind"]?.string ?? "" {
            case "ServiceAccount":
                if !name.isEmpty { errors += nameMessages(.dns1123Subdomain, name).map { .invalid("\(p).name", name, $0) } }
                if !group.isEmpty { errors.append(.notSupported("\(p).apiGroup", group, [""])) }
                if !namespaced, (subject["namespace"]?.string ?? "").isEmpty { errors.append(.required("\(p).namespace")) }
            case "User", "Group":
                if group != rbacGroup { errors.append(.notSupported("\(p).apiGroup", group, [rbacGroup])) }
            default:
                errors.append(.notSupported("\(p).kind", subject["kind"]?.string ?? "", ["ServiceAccount", "User", "Group"]))
            }
        }
        return errors
    }
}
