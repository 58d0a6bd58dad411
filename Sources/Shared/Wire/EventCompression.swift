import CZlib
import Foundation

/// The audit batch's compressed form (`AuditBatch.compressed_events`): events framed
/// as a 4-byte big-endian length and their bytes, the whole deflated with zlib.
/// Decompression is bounded, so a small crafted payload cannot expand past what the
/// hub accepts in one message.
public enum EventCompression {
    /// Compresses `events` at zlib's fastest level (audit JSON repeats a lot: even
    /// the fastest level gives about 10x, at a fraction of the CPU of the default).
    public static func compress(_ events: [Data], level: Int32 = 1) throws -> Data {
        var framed = Data()
        framed.reserveCapacity(events.reduce(0) { $0 + $1.count + 4 })
        for event in events {
            var length = UInt32(event.count).bigEndian
            withUnsafeBytes(of: &length) { framed.append(contentsOf: $0) }
            framed.append(event)
        }
        var stream = z_stream()
        guard deflateInit_(&stream, level, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw TetherError(.internalError, "zlib: cannot start compression")
        }
        defer { deflateEnd(&stream) }
        var output = Data(count: Int(deflateBound(&stream, UInt(framed.count))))
        let written: Int = try framed.withUnsafeBytes { input in
            try output.withUnsafeMutableBytes { out in
                stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
                stream.avail_in = uInt(input.count)
                stream.next_out = out.bindMemory(to: Bytef.self).baseAddress
                stream.avail_out = uInt(out.count)
                guard deflate(&stream, Z_FINISH) == Z_STREAM_END else { throw TetherError(.internalError, "zlib: compression did not finish") }
                return out.count - Int(stream.avail_out)
            }
        }
        output.count = written
        return output
    }

    /// The events of a compressed batch. Refuses (with `invalidArgument`) data that
    /// is not zlib, that would expand past `limit` bytes, or whose frames do not add
    /// up to exactly `count` events.
    public static func decompress(_ data: Data, count: Int, limit: Int = WireLimits.maxMessageBytes) throws -> [Data] {
        var stream = z_stream()
        guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw TetherError(.internalError, "zlib: cannot start decompression")
        }
        defer { inflateEnd(&stream) }
        var framed = Data()
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        var status: Int32 = Z_OK
        try data.withUnsafeBytes { input in
            stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(input.count)
            repeat {
                let produced: Int = chunk.withUnsafeMutableBytes { out in
                    stream.next_out = out.bindMemory(to: Bytef.self).baseAddress
                    stream.avail_out = uInt(out.count)
                    status = inflate(&stream, Z_NO_FLUSH)
                    return out.count - Int(stream.avail_out)
                }
                guard status == Z_OK || status == Z_STREAM_END else {
                    throw TetherError(.invalidArgument, "compressed audit batch is not valid zlib data (zlib status \(status))")
                }
                guard framed.count + produced <= limit else {
                    throw TetherError(.invalidArgument, "compressed audit batch expands past \(ByteCount.format(limit)); refused")
                }
                framed.append(contentsOf: chunk[..<produced])
                if produced == 0 && status == Z_OK && stream.avail_in == 0 {
                    throw TetherError(.invalidArgument, "compressed audit batch is truncated")
                }
            } while status != Z_STREAM_END
        }
        var events: [Data] = []
        // `count` comes from the sender: reserve no more than the frames could hold.
        events.reserveCapacity(min(count, framed.count / 4))
        var offset = framed.startIndex
        while offset < framed.endIndex {
            guard framed.endIndex - offset >= 4, events.count < count else {
                throw TetherError(.invalidArgument, "compressed audit batch holds more than its \(count) events, or a torn frame")
            }
            let length = framed[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            offset += 4
            guard framed.endIndex - offset >= length else {
                throw TetherError(.invalidArgument, "compressed audit batch has a frame of \(length) bytes past its end")
            }
            events.append(framed[offset..<offset + length])
            offset += length
        }
        guard events.count == count else {
            throw TetherError(.invalidArgument, "compressed audit batch holds \(events.count) events, not the \(count) it names")
        }
        return events
    }
}
