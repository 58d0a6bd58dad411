import Foundation
import Hummingbird
import NIOFoundationCompat
import Shared

/// Refuses request bodies in which a JSON object has the same key twice (400),
/// before any route decodes them: parsers disagree on which occurrence counts,
/// so such a body could be checked as one thing and acted on as another.
struct StrictJSONMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard [.post, .put, .patch].contains(request.method) else { return try await next(request, context) }
        var request = request
        // Collected once; the route's decoder reads the same buffer.
        let body = try await request.collectBody(upTo: context.maxUploadSize)
        if body.readableBytes > 0, let duplicate = try? JSONScanner.firstDuplicateKey(in: Data(buffer: body)) {
            throw TetherError(.invalidArgument, "request body has the key '\(duplicate)' more than once; each key may appear once per object")
        }
        return try await next(request, context)
    }
}
