/// What a Kubernetes API request is about, read from its method and path as the
/// API server's request-info resolver reads it: the verb (`get`, `list`, `watch`,
/// `create`, `update`, `patch`, `delete`, `deletecollection`), the API group, the
/// resource (with a subresource as `pods/log`), the namespace and the name. Paths
/// that name no resource (`/api`, `/version`, `/openapi/v3`) have no resource and
/// the method as the verb.
struct KubeRequestInfo: Equatable, Sendable {
    var verb: String
    var apiGroup: String?
    var resource: String?
    var namespace: String?
    var name: String?

    init(verb: String, apiGroup: String? = nil, resource: String? = nil, namespace: String? = nil, name: String? = nil) {
        self.verb = verb
        self.apiGroup = apiGroup
        self.resource = resource
        self.namespace = namespace
        self.name = name
    }

    /// Subresources that open a stream into a running pod.
    static let connectSubresources: Set<String> = ["pods/exec", "pods/attach", "pods/portforward"]

    init(method: String, path: String) {
        let (pathPart, query) = path.split(separator: "?", maxSplits: 1).map(String.init).splitFirst()
        let watch = query.split(separator: "&").contains { $0 == "watch=true" || $0 == "watch=1" }
        var segments = pathPart.split(separator: "/").map(String.init)
        let nonResource = KubeRequestInfo(verb: method.lowercased())
        var group: String?
        if segments.first == "api", segments.count >= 2 {
            group = ""
            segments.removeFirst(2)
        } else if segments.first == "apis", segments.count >= 3 {
            group = segments[1]
            segments.removeFirst(3)
        } else {
            self = nonResource
            return
        }
        guard !segments.isEmpty else { self = nonResource; return }
        var namespace: String?
        // namespaces/NS/RESOURCE...: a namespaced request; namespaces[/NS] alone is
        // the Namespace resource itself.
        if segments.count >= 3, segments[0] == "namespaces" {
            namespace = segments[1]
            segments.removeFirst(2)
        }
        var resource = segments[0]
        let name = segments.count > 1 ? segments[1] : nil
        if segments.count > 2 { resource += "/" + segments[2...].joined(separator: "/") }
        var verb: String
        switch (method.uppercased(), name) {
        case ("GET", nil), ("HEAD", nil): verb = watch ? "watch" : "list"
        case ("GET", _), ("HEAD", _): verb = watch ? "watch" : "get"
        case ("POST", _): verb = "create"
        case ("PUT", _): verb = "update"
        case ("PATCH", _): verb = "patch"
        case ("DELETE", nil): verb = "deletecollection"
        case ("DELETE", _): verb = "delete"
        default: verb = method.lowercased()
        }
        // exec, attach and port-forward start something in the cluster: `create` on
        // the subresource whatever the method (a WebSocket upgrade arrives as GET;
        // kube-apiserver checks create for it too since 1.35).
        if Self.connectSubresources.contains(resource) { verb = "create" }
        self.init(verb: verb, apiGroup: group, resource: resource, namespace: namespace, name: name)
    }
}

private extension Array where Element == String {
    func splitFirst() -> (String, String) { (first ?? "", count > 1 ? self[1] : "") }
}
