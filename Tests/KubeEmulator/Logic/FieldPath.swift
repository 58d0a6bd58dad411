/// One step into an object: a named field, an item of an associative list picked
/// by its key fields, or an item of a set-like list picked by its value.
public enum PathElement: Sendable, Hashable {
    case field(String)
    case key(JSON)
    case value(JSON)
}

/// A path to a field, as server-side apply tracks ownership (structured-merge-diff).
public struct FieldPath: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var elements: [PathElement]

    public init(_ elements: [PathElement]) { self.elements = elements }

    /// A path of plain field names, e.g. `FieldPath(fields: "metadata", "labels", "app")`.
    public init(fields: String...) { elements = fields.map { .field($0) } }

    /// Printed like structured-merge-diff prints paths in conflict messages: `.rules`,
    /// `.metadata.labels.app`, `.spec.matchConditions[name="x"]`, `.metadata.finalizers[="f"]`.
    public var description: String {
        elements.map { element -> String in
            switch element {
            case .field(let name): return ".\(name)"
            case .key(let key):
                let pairs = (key.objectValue ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.text)" }
                return "[\(pairs.joined(separator: ","))]"
            case .value(let value): return "[=\(value.text)]"
            }
        }.joined()
    }

    public static func < (a: FieldPath, b: FieldPath) -> Bool { a.description < b.description }

    func appending(_ element: PathElement) -> FieldPath { FieldPath(elements + [element]) }
    var names: [String] { elements.compactMap { if case .field(let n) = $0 { return n } else { return nil } } }
}

/// How a list field merges under server-side apply, per the Kubernetes schema.
enum ListType: Equatable {
    /// Replaced as a whole and owned as one field (the default for RBAC rules and subjects).
    case atomic
    /// Items are scalars owned one by one (`+listType=set`).
    case set
    /// Items are objects owned one by one, identified by these key fields (`+listType=map`).
    case map([String])
}

/// The subset of the Kubernetes schema that server-side apply needs for the served kinds.
public struct ApplySchema: Sendable {
    let type: ResourceType

    init(_ type: ResourceType) { self.type = type }

    func listType(at names: [String]) -> ListType {
        switch names {
        case ["metadata", "finalizers"]: return .set
        case ["metadata", "ownerReferences"]: return .map(["uid"])
        case ["spec", "matchConditions"] where type == .validatingAdmissionPolicies || type == .validatingAdmissionPolicyBindings:
            return .map(["name"])
        case ["spec", "validationActions"] where type == .validatingAdmissionPolicyBindings: return .set
        default: return .atomic
        }
    }

    /// Fields the API server never tracks as owned by a manager.
    func isIgnored(_ names: [String]) -> Bool {
        if names.count == 1, ["apiVersion", "kind"].contains(names[0]) { return true }
        if names.first == "status", type.hasStatus { return true }
        if names.count == 2, names[0] == "metadata",
           ["name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
            "deletionTimestamp", "deletionGracePeriodSeconds"].contains(names[1]) { return true }
        return false
    }

    /// Every leaf field set in `object`, as the paths a manager would own.
    public func fieldSet(_ object: JSON) -> Set<FieldPath> {
        var result = Set<FieldPath>()
        collect(object, FieldPath([]), into: &result)
        return result
    }

    private func collect(_ value: JSON, _ path: FieldPath, into result: inout Set<FieldPath>) {
        let names = path.names
        if !names.isEmpty, isIgnored(names) { return }
        switch value {
        case .object(let members):
            if members.isEmpty, !path.elements.isEmpty { result.insert(path); return }
            for (name, member) in members { collect(member, path.appending(.field(name)), into: &result) }
        case .array(let items):
            switch listType(at: names) {
            case .atomic: result.insert(path)
            case .set:
                if items.isEmpty { result.insert(path) }
                for item in items { result.insert(path.appending(.value(item))) }
            case .map(let keys):
                if items.isEmpty { result.insert(path) }
                for item in items {
                    let itemPath = path.appending(.key(Self.key(of: item, keys)))
                    result.insert(itemPath)
                    for (name, member) in item.objectValue ?? [:] { collect(member, itemPath.appending(.field(name)), into: &result) }
                }
            }
        default:
            if !path.elements.isEmpty { result.insert(path) }
        }
    }

    static func key(of item: JSON, _ keys: [String]) -> JSON {
        var key: [String: JSON] = [:]
        for k in keys { key[k] = item[k] ?? .null }
        return .object(key)
    }
}

extension JSON {
    /// The value at a field path, or nil when absent.
    func value(at path: FieldPath) -> JSON? {
        var node: JSON? = self
        for element in path.elements {
            guard let current = node else { return nil }
            switch element {
            case .field(let name): node = current[name]
            case .key(let key): node = current.arrayValue?.first { item in (key.objectValue ?? [:]).allSatisfy { item[$0.key] ?? .null == $0.value } }
            case .value(let value): node = current.arrayValue?.contains(value) == true ? value : nil
            }
        }
        return node
    }

    /// Sets the value at a field path, creating parents. A `.key` or `.value` last step
    /// only makes sure the item exists.
    mutating func set(_ newValue: JSON, at path: FieldPath) {
        guard let first = path.elements.first else { self = newValue; return }
        let rest = FieldPath(Array(path.elements.dropFirst()))
        switch first {
        case .field(let name):
            var child = self[name] ?? .object([:])
            child.set(newValue, at: rest)
            self[name] = child
        case .key(let key):
            var items = arrayValue ?? []
            let matches: (JSON) -> Bool = { item in (key.objectValue ?? [:]).allSatisfy { item[$0.key] ?? .null == $0.value } }
            var index = items.firstIndex(where: matches)
            if index == nil { items.append(key); index = items.count - 1 }
            if !rest.elements.isEmpty { items[index!].set(newValue, at: rest) }
            self = .array(items)
        case .value(let value):
            var items = arrayValue ?? []
            if !items.contains(value) { items.append(value) }
            self = .array(items)
        }
    }

    /// Removes the value at a field path; absent paths are left alone.
    mutating func remove(at path: FieldPath) {
        guard let first = path.elements.first else { return }
        let rest = FieldPath(Array(path.elements.dropFirst()))
        switch first {
        case .field(let name):
            if rest.elements.isEmpty { self[name] = nil; return }
            guard var child = self[name] else { return }
            child.remove(at: rest)
            self[name] = child
        case .key(let key):
            guard var items = arrayValue else { return }
            let matches: (JSON) -> Bool = { item in (key.objectValue ?? [:]).allSatisfy { item[$0.key] ?? .null == $0.value } }
            guard let index = items.firstIndex(where: matches) else { return }
            if rest.elements.isEmpty { items.remove(at: index) } else { items[index].remove(at: rest) }
            self = .array(items)
        case .value(let value):
            guard var items = arrayValue else { return }
            items.removeAll { $0 == value }
            self = .array(items)
        }
    }
}

/// Conversion between path sets and the `fieldsV1` trie of `managedFields`.
enum FieldsV1 {
    static func encode(_ paths: Set<FieldPath>) -> JSON {
        final class Node { var children: [String: Node] = [:]; var isLeaf = false }
        let root = Node()
        for path in paths {
            var node = root
            for element in path.elements {
                let name = keyString(element)
                if let next = node.children[name] { node = next } else { let next = Node(); node.children[name] = next; node = next }
            }
            node.isLeaf = true
        }
        func render(_ node: Node) -> JSON {
            var object: [String: JSON] = [:]
            for (name, child) in node.children { object[name] = render(child) }
            if node.isLeaf, !node.children.isEmpty { object["."] = .object([:]) }
            return .object(object)
        }
        return render(root)
    }

    static func decode(_ trie: JSON) -> Set<FieldPath> {
        var result = Set<FieldPath>()
        func walk(_ node: JSON, _ path: FieldPath) {
            let members = node.objectValue ?? [:]
            if members.isEmpty, !path.elements.isEmpty { result.insert(path); return }
            for (name, child) in members {
                if name == "." { result.insert(path); continue }
                guard let element = element(name) else { continue }
                walk(child, path.appending(element))
            }
        }
        walk(trie, FieldPath([]))
        return result
    }

    private static func keyString(_ element: PathElement) -> String {
        switch element {
        case .field(let name): return "f:\(name)"
        case .key(let key): return "k:\(key.text)"
        case .value(let value): return "v:\(value.text)"
        }
    }

    private static func element(_ name: String) -> PathElement? {
        let body = String(name.dropFirst(2))
        switch name.prefix(2) {
        case "f:": return .field(body)
        case "k:": return (try? JSON.parse(Data(body.utf8))).map { .key($0) }
        case "v:": return (try? JSON.parse(Data(body.utf8))).map { .value($0) }
        default: return nil
        }
    }
}

import Foundation
