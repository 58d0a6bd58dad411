import Foundation
import Synchronization

/// One change as a watch reports it.
struct StoredEvent: Sendable {
    let resourceVersion: Int
    let type: ResourceType
    let kind: String
    let object: JSON
    let previous: JSON?
}

/// What a watcher wants to hear about.
struct WatchFilter: Sendable {
    let type: ResourceType
    let namespace: String?
    let labels: LabelSelector
    let fields: LabelSelector

    func matches(_ object: JSON) -> Bool {
        let meta = object["metadata"]
        if let namespace, meta?["namespace"]?.string != namespace { return false }
        let labels = (meta?["labels"]?.objectValue ?? [:]).compactMapValues(\.string)
        var fieldValues = ["metadata.name": meta?["name"]?.string ?? "", "metadata.namespace": meta?["namespace"]?.string ?? ""]
        if type == .secrets { fieldValues["type"] = object["type"]?.string ?? "" }
        return self.labels.matches(labels) && self.fields.matches(fieldValues)
    }
}

/// The emulator's state: objects by resource, a global resourceVersion counter, a
/// bounded event history for watches, and the open watches. Every operation runs
/// under one lock, so a watch registers without missing or repeating an event.
final class ObjectStore: Sendable {
    struct Key: Hashable, Comparable {
        let namespace: String
        let name: String
        static func < (a: Key, b: Key) -> Bool { (a.namespace, a.name) < (b.namespace, b.name) }
    }

    struct Watcher {
        let filter: WatchFilter
        let continuation: AsyncStream<JSON>.Continuation
    }

    struct State {
        var resourceVersion = 0
        var objects: [ResourceType: [Key: JSON]] = [:]
        var history: [StoredEvent] = []
        /// Watches may start from any resourceVersion at or after this one.
        var oldestWatchable = 0
        var watchers: [UUID: Watcher] = [:]
        var tokens: [String: String] = [:]
        /// False while the emulator is stopped or restarting: a watch that arrives
        /// then ends at once, as the connection it came on is closing.
        var serving = true
    }

    let state = Mutex(State())
    let historyLimit: Int

    init(historyLimit: Int) { self.historyLimit = historyLimit }

    static func now() -> String { Date().formatted(.iso8601) }

    // MARK: reads

    func get(_ type: ResourceType, _ namespace: String, _ name: String) throws(EmulatorError) -> JSON {
        guard let object = state.withLock({ $0.objects[type]?[Key(namespace: namespace, name: name)] }) else {
            throw EmulatorError.notFound(type, name)
        }
        return object
    }

    func list(_ filter: WatchFilter) -> (items: [JSON], resourceVersion: Int) {
        state.withLock { s in
            let items = (s.objects[filter.type] ?? [:]).sorted { $0.key < $1.key }.map(\.value).filter(filter.matches)
            return (items, s.resourceVersion)
        }
    }

    // MARK: writes

    /// Stores `object` (nil deletes) under the next resourceVersion and tells watchers.
    @discardableResult
    private static func commit(_ s: inout State, _ type: ResourceType, _ key: Key, _ object: JSON?, limit: Int) -> JSON? {
        let previous = s.objects[type]?[key]
        s.resourceVersion += 1
        let rv = s.resourceVersion
        var stored = object ?? previous ?? .null
        stored[path: ["metadata", "resourceVersion"]] = .string(String(rv))
        let kind: String
        if object == nil { kind = "DELETED"; s.objects[type]?[key] = nil } else {
            kind = previous == nil ? "ADDED" : "MODIFIED"
            s.objects[type, default: [:]][key] = stored
        }
        let event = StoredEvent(resourceVersion: rv, type: type, kind: kind, object: stored, previous: previous)
        s.history.append(event)
        if s.history.count > limit {
            let dropped = s.history.count - limit
            s.oldestWatchable = s.history[dropped - 1].resourceVersion
            s.history.removeFirst(dropped)
        }
        for watcher in s.watchers.values where watcher.filter.type == type {
            if let json = watchEvent(event, watcher.filter) { watcher.continuation.yield(json) }
        }
        return stored
    }

    /// The event one watcher sees, as the API server's watch cache decides it: an object
    /// that stops matching the selector is reported DELETED, one that starts matching ADDED.
    static func watchEvent(_ event: StoredEvent, _ filter: WatchFilter) -> JSON? {
        let now = event.kind != "DELETED" && filter.matches(event.object)
        let before = event.previous.map(filter.matches) ?? false
        switch (now, before) {
        case (true, false): return ["type": "ADDED", "object": event.object]
        case (true, true): return ["type": .string(event.kind), "object": event.object]
        case (false, true):
            var old = event.previous!
            old[path: ["metadata", "resourceVersion"]] = .string(String(event.resourceVersion))
            return ["type": "DELETED", "object": old]
        default: return nil
        }
    }

    /// A create, update or apply as one step under the lock: `change` gets the current
    /// object (or nil) and returns the object to store, or nil to leave things as they are.
    func mutate(_ type: ResourceType, _ namespace: String, _ name: String,
                _ change: (JSON?, State) throws(EmulatorError) -> JSON?) throws(EmulatorError) -> (object: JSON?, existed: Bool) {
        let limit = historyLimit
        let outcome: Result<(JSON?, Bool), EmulatorError> = state.withLock { s in
            let key = Key(namespace: namespace, name: name)
            let current = s.objects[type]?[key]
            do {
                guard var next = try change(current, s) else { return .success((current, current != nil)) }
                if type.namespaced, s.objects[.namespaces]?[Key(namespace: "", name: namespace)] == nil {
                    throw EmulatorError.notFound(.namespaces, namespace)
                }
                if let current, Self.sameIgnoringTimes(current, next) { return .success((current, true)) }
                if let current, current[path: ["metadata", "deletionTimestamp"]] != nil,
                   (next[path: ["metadata", "finalizers"]]?.arrayValue ?? []).isEmpty, type != .namespaces {
                    next[path: ["metadata", "resourceVersion"]] = nil
                    return .success((Self.commit(&s, type, key, nil, limit: limit), true))
                }
                return .success((Self.commit(&s, type, key, next, limit: limit), current != nil))
            } catch let error as EmulatorError { return .failure(error) } catch { return .failure(.badRequest("\(error)")) }
        }
        return try outcome.get()
    }

    private static func sameIgnoringTimes(_ a: JSON, _ b: JSON) -> Bool {
        func strip(_ o: JSON) -> JSON {
            var o = o
            o[path: ["metadata", "resourceVersion"]] = nil
            if let entries = o[path: ["metadata", "managedFields"]]?.arrayValue {
                o[path: ["metadata", "managedFields"]] = .array(entries.map { var e = $0; e["time"] = nil; return e })
            }
            return o
        }
        return strip(a) == strip(b)
    }

    /// Deletes an object: at once, or by setting deletionTimestamp when finalizers remain.
    /// Returns the object as last stored and whether it is gone.
    func delete(_ type: ResourceType, _ namespace: String, _ name: String, precondition: (uid: String?, resourceVersion: String?)) throws(EmulatorError) -> (object: JSON, gone: Bool) {
        let limit = historyLimit
        let outcome: Result<(JSON, Bool), EmulatorError> = state.withLock { s in
            let key = Key(namespace: namespace, name: name)
            guard var current = s.objects[type]?[key] else { return .failure(.notFound(type, name)) }
            let meta = current["metadata"]
            if let uid = precondition.uid, meta?["uid"]?.string != uid {
                return .failure(EmulatorError(code: 409, reason: "Conflict",
                    message: "Operation cannot be fulfilled on \(type.qualifiedName) \"\(name)\": Precondition failed: UID in precondition: \(uid), UID in object meta: \(meta?["uid"]?.string ?? "")",
                    details: Self.details(type, name)))
            }
            if let rv = precondition.resourceVersion, meta?["resourceVersion"]?.string != rv {
                return .failure(EmulatorError(code: 409, reason: "Conflict",
                    message: "Operation cannot be fulfilled on \(type.qualifiedName) \"\(name)\": Precondition failed: ResourceVersion in precondition: \(rv), ResourceVersion in object meta: \(meta?["resourceVersion"]?.string ?? "")",
                    details: Self.details(type, name)))
            }
            if type == .namespaces {
                // The namespace controller empties the namespace, then the namespace goes.
                if current[path: ["metadata", "deletionTimestamp"]] == nil {
                    current[path: ["metadata", "deletionTimestamp"]] = .string(Self.now())
                    current[path: ["metadata", "deletionGracePeriodSeconds"]] = 0
                    current[path: ["status", "phase"]] = "Terminating"
                    current = Self.commit(&s, type, key, current, limit: limit) ?? current
                }
                for resource in ResourceType.all where resource.namespaced {
                    for k in (s.objects[resource] ?? [:]).keys.sorted() where k.namespace == name {
                        Self.commit(&s, resource, k, nil, limit: limit)
                    }
                }
                Self.commit(&s, type, key, nil, limit: limit)
                return .success((current, false))
            }
            if !(meta?["finalizers"]?.arrayValue ?? []).isEmpty {
                if meta?["deletionTimestamp"] == nil {
                    current[path: ["metadata", "deletionTimestamp"]] = .string(Self.now())
                    current[path: ["metadata", "deletionGracePeriodSeconds"]] = 0
                    current = Self.commit(&s, type, key, current, limit: limit) ?? current
                }
                return .success((current, false))
            }
            let stored = Self.commit(&s, type, key, nil, limit: limit) ?? current
            return .success((stored, true))
        }
        return try outcome.get()
    }

    private static func details(_ type: ResourceType, _ name: String) -> JSON {
        var d: JSON = ["name": .string(name), "kind": .string(type.plural)]
        if !type.group.isEmpty { d["group"] = .string(type.group) }
        return d
    }

    // MARK: watch

    /// Opens a watch after `resourceVersion` (nil: synthetic ADDED events for what exists
    /// now, then changes). A resourceVersion older than the kept history yields one
    /// ERROR event with a 410 Expired status, and the stream ends.
    func watch(_ filter: WatchFilter, after resourceVersion: Int?) -> (AsyncStream<JSON>, cancel: @Sendable () -> Void) {
        let (stream, continuation) = AsyncStream<JSON>.makeStream()
        let id = UUID()
        state.withLock { s in
            guard s.serving else {
                continuation.finish()
                return
            }
            if let rv = resourceVersion {
                if rv < s.oldestWatchable {
                    let error = EmulatorError.expired("too old resource version: \(rv) (\(s.oldestWatchable))")
                    continuation.yield(["type": "ERROR", "object": error.status])
                    continuation.finish()
                    return
                }
                for event in s.history where event.resourceVersion > rv && event.type == filter.type {
                    if let json = Self.watchEvent(event, filter) { continuation.yield(json) }
                }
            } else {
                for (_, object) in (s.objects[filter.type] ?? [:]).sorted(by: { $0.key < $1.key }) where filter.matches(object) {
                    continuation.yield(["type": "ADDED", "object": object])
                }
            }
            s.watchers[id] = Watcher(filter: filter, continuation: continuation)
        }
        let cancel: @Sendable () -> Void = { [weak self] in
            let watcher = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
            watcher?.continuation.finish()
        }
        continuation.onTermination = { _ in cancel() }
        return (stream, cancel)
    }

    /// Forgets the event history: watches from any earlier resourceVersion get 410.
    func compactHistory() {
        state.withLock { s in
            s.history.removeAll()
            s.oldestWatchable = s.resourceVersion
        }
    }

    /// Ends every open watch (on shutdown).
    func closeWatches() {
        for w in removeWatchers() { w.continuation.finish() }
    }

    /// Sends every open watch the ERROR event 410 Expired and ends it.
    func expireWatches() {
        let error = EmulatorError.expired("The resourceVersion for the provided watch is too old.")
        for w in removeWatchers() {
            w.continuation.yield(["type": "ERROR", "object": error.status])
            w.continuation.finish()
        }
    }

    func setServing(_ serving: Bool) { state.withLock { $0.serving = serving } }

    private func removeWatchers() -> [Watcher] {
        state.withLock { s in
            let all = s.watchers.values
            s.watchers.removeAll()
            return Array(all)
        }
    }
}

extension JSON {
    func merging(_ other: [String: JSON]) -> JSON {
        guard case .object(var o) = self else { return self }
        for (k, v) in other { o[k] = v }
        return .object(o)
    }
}
