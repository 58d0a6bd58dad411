import Foundation
import Hummingbird

/// The thin HTTP edge: turns Hummingbird requests into `APIRequest`s and `APIResponse`s
/// into responses, streaming watch events as chunked newline-delimited JSON.
struct EmulatorResponder: HTTPResponder {
    typealias Context = BasicRequestContext
    let handler: APIHandler

    func respond(to request: Request, context: Context) async throws -> Response {
        let body = try await request.body.collect(upTo: 32 << 20)
        let api = APIRequest(
            // Go's net/http hands the API server the decoded path (`%2F` becomes a `/`, so it splits segments there too).
            method: request.method.rawValue, path: request.uri.path.removingPercentEncoding ?? request.uri.path, query: APIRequest.parseQuery(request.uri.query),
            queryItems: APIRequest.parseQueryItems(request.uri.query),
            contentType: request.headers[.contentType], userAgent: request.headers[.userAgent],
            authorization: request.headers[.authorization], body: Data(body.readableBytesView))
        switch handler.handle(api) {
        case .json(let code, let json):
            return Self.response(code, json.data())
        case .raw(let code, let data):
            return Self.response(code, data)
        case .watch(let stream, let cancel, let timeout):
            return Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody { writer in
                defer { cancel() }
                let timer = timeout.map { timeout in Task { try await Task.sleep(for: timeout); cancel() } }
                defer { timer?.cancel() }
                for await event in stream {
                    var data = event.data()
                    data.append(UInt8(ascii: "\n"))
                    try await writer.write(ByteBuffer(bytes: data))
                }
                try await writer.finish(nil)
            })
        case .text(let lines, let cancel):
            return Response(status: .ok, headers: [.contentType: "text/plain"], body: ResponseBody { writer in
                defer { cancel() }
                for await line in lines { try await writer.write(ByteBuffer(string: line)) }
                try await writer.finish(nil)
            })
        }
    }

    private static func response(_ code: Int, _ data: Data) -> Response {
        Response(status: .init(code: code), headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
