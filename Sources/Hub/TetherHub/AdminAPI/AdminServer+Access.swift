import Foundation
import Hummingbird
import HubStore
import Shared

/// `/v1/access/…` (AccessRoles, who-can, explain) and `/v1/sessions/…`.
extension AdminServer {
    struct ExplainRequest: Codable {
        var user: String
        var groups: [String]?
        var cluster: String
    }

    struct CreateSessionRequest: Codable {
        var user: String
        var groups: [String]?
        var ttlSeconds: Double?
    }

    struct CreatedSession: Codable {
        var session: SessionView
        /// Shown once; the hub keeps only the session record.
        var credential: String
        /// The AccessRole whose maxSessionDuration shortened the session, if any.
        var cappedBy: String?
        /// The access listener's URL (nil: the hub runs without one) and its CA.
        var hub: String?
        var caCertificate: String?
    }

    struct RevokeSessionsRequest: Codable {
        var user: String
    }

    struct AppliedRoles: Codable {
        var roles: [String]
    }

    struct PersonChanged: Codable {
        var name: String
    }

    static func addAccessRoutes(to v1: RouterGroup<BasicRequestContext>, core: HubCore) {
        v1.post("access/roles") { request, context -> Response in
            let body = try await request.decode(as: ApplyRequest.self, context: context)
            guard !body.files.isEmpty else { throw TetherError(.invalidArgument, "no files to apply") }
            var roles: [AccessRole] = []
            for file in body.files { roles += try AccessRoleParser.parse(yaml: file.yaml, file: file.name) }
            var names = Set<String>()
            for role in roles where !names.insert(role.name).inserted {
                throw TetherError(.invalidArgument, "access role \(role.name) is defined in more than one file")
            }
            try await core.applyAccessRoles(roles)
            return try json(AppliedRoles(roles: roles.map(\.name)))
        }
        v1.get("access/roles") { _, _ -> Response in
            try json(try await core.accessRoleViews())
        }
        v1.get("access/roles/:name") { _, context -> Response in
            let name = try context.parameters.require("name")
            guard let view = try await core.accessRoleViews(includeDocument: true).first(where: { $0.name == name }) else {
                throw TetherError(.notFound, "access role '\(name)' not found")
            }
            return try json(view)
        }
        v1.delete("access/roles/:name") { _, context -> Response in
            let name = try context.parameters.require("name")
            try await core.deleteAccessRole(name)
            return try json(AppliedRoles(roles: [name]))
        }
        v1.get("access/who-can/:cluster") { _, context -> Response in
            try json(try await core.whoCan(try ClusterName(context.parameters.require("cluster"))))
        }
        v1.post("access/explain") { request, context -> Response in
            let body = try await request.decode(as: ExplainRequest.self, context: context)
            return try json(try await core.explainAccess(user: body.user, groups: body.groups ?? [], cluster: try ClusterName(body.cluster)))
        }
        v1.post("sessions") { request, context -> Response in
            let body = try await request.decode(as: CreateSessionRequest.self, context: context)
            let ttl = try body.ttlSeconds.map { try DurationParser.duration(seconds: $0, field: "ttlSeconds") }
            let (session, credential, cappedBy) = try await core.createSession(user: body.user, groups: body.groups ?? [], ttl: ttl)
            let endpoint = await core.accessEndpoint.value
            return try json(CreatedSession(session: SessionView(session), credential: credential, cappedBy: cappedBy,
                                           hub: endpoint?.url, caCertificate: endpoint?.caCertificate), status: .created)
        }
        v1.get("sessions") { request, _ -> Response in
            try json(try await core.sessionViews(includeEnded: request.uri.queryParameters["all"] == "true"))
        }
        v1.delete("sessions/:id") { _, context -> Response in
            try json(try await core.revokeSessions(id: context.parameters.require("id")).map(SessionView.init))
        }
        v1.post("sessions/revoke") { request, context -> Response in
            let body = try await request.decode(as: RevokeSessionsRequest.self, context: context)
            return try json(try await core.revokeSessions(user: body.user).map(SessionView.init))
        }
        // People who signed in through the identity provider.
        v1.get("people") { _, _ -> Response in
            try json(try await core.personViews())
        }
        v1.post("people/:name/disable") { _, context -> Response in
            try json(try await core.disablePerson(context.parameters.require("name")).map(SessionView.init))
        }
        v1.post("people/:name/enable") { _, context -> Response in
            let name = try context.parameters.require("name")
            try await core.enablePerson(name)
            return try json(PersonChanged(name: name))
        }
        v1.post("people/:name/reset-otp") { _, context -> Response in
            let name = try context.parameters.require("name")
            try await core.resetSecondFactor(name)
            return try json(PersonChanged(name: name))
        }
    }
}
