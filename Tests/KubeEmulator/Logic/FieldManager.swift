import Foundation

/// One `metadata.managedFields` entry: what a manager owns and how it got it.
public struct ManagedFieldsEntry: Sendable, Equatable {
    public enum Operation: String, Sendable { case apply = "Apply", update = "Update" }
    public var manager: String
    public var operation: Operation
    public var apiVersion: String
    public var time: String
    public var fields: Set<FieldPath>

    public init(manager: String, operation: Operation, apiVersion: String, time: String, fields: Set<FieldPath>) {
        self.manager = manager
        self.operation = operation
        self.apiVersion = apiVersion
        self.time = time
        self.fields = fields
    }

    var json: JSON {
        ["manager": .string(manager), "operation": .string(operation.rawValue), "apiVersion": .string(apiVersion),
         "time": .string(time), "fieldsType": "FieldsV1", "fieldsV1": FieldsV1.encode(fields)]
    }

    init?(json: JSON) {
        guard let manager = json["manager"]?.string, let op = json["operation"]?.string.flatMap(Operation.init(rawValue:)) else { return nil }
        self.init(manager: manager, operation: op, apiVersion: json["apiVersion"]?.string ?? "", time: json["time"]?.string ?? "",
                  fields: json["fieldsV1"].map(FieldsV1.decode) ?? [])
    }

    static func list(from object: JSON) -> [ManagedFieldsEntry] {
        (object[path: ["metadata", "managedFields"]]?.arrayValue ?? []).compactMap(ManagedFieldsEntry.init(json:))
    }

    /// How structured-merge-diff names this manager in conflict messages.
    var conflictName: String {
        operation == .update ? "\"\(manager)\" using \(apiVersion)" : "\"\(manager)\""
    }
}

/// A field another manager owns that an apply would change.
public struct ApplyConflict: Sendable, Equatable {
    public let manager: String
    public let conflictName: String
    public let path: FieldPath
}

/// Server-side apply and update ownership tracking, without I/O: given the live
/// object and its managed fields, computes the merged object and new managed fields,
/// or the conflicts that stop an apply.
public struct FieldManager: Sendable {
    let schema: ApplySchema
    let apiVersion: String

    public init(type: ResourceType) {
        schema = ApplySchema(type)
        apiVersion = type.apiVersion
    }

    public struct Result: Sendable {
        public var object: JSON
        public var entries: [ManagedFieldsEntry]
    }

    /// Applies `config` as `manager` onto `live` (nil when creating). Throws the 409
    /// conflict `Status` unless `force`, in which case conflicting fields change owner.
    public func apply(live: JSON?, entries: [ManagedFieldsEntry], config: JSON, manager: String, force: Bool, now: String) throws(EmulatorError) -> Result {
        let base = live ?? .object([:])
        let applied = schema.fieldSet(config)
        var entries = entries

        var conflicts: [ApplyConflict] = []
        for path in applied.sorted() {
            if case .key = path.elements.last { continue }
            if config.value(at: path) == base.value(at: path) { continue }
            for entry in entries where !(entry.manager == manager && entry.operation == .apply) && entry.fields.contains(path) {
                conflicts.append(ApplyConflict(manager: entry.manager, conflictName: entry.conflictName, path: path))
            }
        }
        if !conflicts.isEmpty {
            guard force else { throw EmulatorError.applyConflict(conflicts) }
            let taken = Set(conflicts.map(\.path))
            for i in entries.indices where !(entries[i].manager == manager && entries[i].operation == .apply) {
                entries[i].fields.subtract(taken)
            }
        }

        var object = base
        for path in applied.sorted(by: { $0.elements.count < $1.elements.count }) {
            if case .key = path.elements.last { object.set(.null, at: path); continue }
            if case .value = path.elements.last { object.set(.null, at: path); continue }
            object.set(config.value(at: path) ?? .null, at: path)
        }

        let index = entries.firstIndex { $0.manager == manager && $0.operation == .apply }
        let previous = index.map { entries[$0].fields } ?? []
        let others = entries.enumerated().filter { $0.offset != index }.reduce(into: Set<FieldPath>()) { $0.formUnion($1.element.fields) }
        for path in previous.subtracting(applied).subtracting(others).sorted(by: { $0.elements.count > $1.elements.count }) {
            object.remove(at: path)
        }

        if let index {
            if entries[index].fields != applied {
                entries[index].fields = applied
                entries[index].time = now
            }
        } else {
            entries.insert(ManagedFieldsEntry(manager: manager, operation: .apply, apiVersion: apiVersion, time: now, fields: applied), at: 0)
        }
        entries.removeAll { $0.fields.isEmpty }
        return Result(object: object, entries: entries)
    }

    /// Records a non-apply write (create, update, patch) by `manager`: it takes every
    /// field it changed, which no other manager keeps.
    public func update(old: JSON?, new: JSON, entries: [ManagedFieldsEntry], manager: String, now: String) -> [ManagedFieldsEntry] {
        let before = old.map(schema.fieldSet) ?? []
        let after = schema.fieldSet(new)
        let changed = before.union(after).filter { old?.value(at: $0) != new.value(at: $0) }
        var entries = entries
        for i in entries.indices { entries[i].fields.subtract(changed); entries[i].fields.formIntersection(after) }
        let taken = changed.intersection(after)
        if let index = entries.firstIndex(where: { $0.manager == manager && $0.operation == .update }) {
            if !taken.isEmpty {
                entries[index].fields.formUnion(taken)
                entries[index].time = now
            }
        } else if !taken.isEmpty {
            entries.append(ManagedFieldsEntry(manager: manager, operation: .update, apiVersion: apiVersion, time: now, fields: taken))
        }
        entries.removeAll { $0.fields.isEmpty }
        return entries
    }
}
