// A small, dependency-free QR Code encoder (ISO/IEC 18004, Model 2).
//
// Scope: byte mode only (the UTF-8 bytes of a string, no ECI header), versions 1–40,
// all four error-correction levels, automatic mask selection by the standard penalty rules.

/// Thrown by `QRCode.init(text:errorCorrection:)` when the text cannot be encoded.
public enum QRCodeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The UTF-8 encoding of the text has `byteCount` bytes, but even a version 40 symbol
    /// holds at most `maximumByteCount` bytes at the requested error-correction level.
    case dataTooLong(byteCount: Int, maximumByteCount: Int)

    public var description: String {
        switch self {
        case let .dataTooLong(byteCount, maximumByteCount):
            return "Data too long for a QR code: \(byteCount) bytes, at most \(maximumByteCount) fit at this error-correction level"
        }
    }
}

/// An immutable QR Code symbol: a square grid of dark and light modules.
public struct QRCode: Sendable {
    /// Error-correction level; higher levels recover more damage but hold less data.
    public enum ErrorCorrection: Sendable, CaseIterable {
        /// Recovers about 7 % of codewords.
        case low
        /// Recovers about 15 % of codewords.
        case medium
        /// Recovers about 25 % of codewords.
        case quartile
        /// Recovers about 30 % of codewords.
        case high

        /// Row index into the block tables below.
        fileprivate var ordinal: Int {
            switch self {
            case .low: 0
            case .medium: 1
            case .quartile: 2
            case .high: 3
            }
        }

        /// The two-bit indicator written into the format information (ISO/IEC 18004 Table 12).
        fileprivate var formatBits: Int {
            switch self {
            case .low: 1
            case .medium: 0
            case .quartile: 3
            case .high: 2
            }
        }
    }

    /// Number of modules per side: `4 * version + 17`, from 21 to 177.
    public let size: Int
    /// Symbol version, 1...40.
    public let version: Int
    /// Data mask pattern applied, 0...7.
    public let mask: Int
    /// Error-correction level of the symbol.
    public let errorCorrection: ErrorCorrection
    /// Row-major modules, `true` = dark.
    private let modules: [Bool]

    /// The module at column `x`, row `y` (origin top left); `true` means dark.
    /// Coordinates outside the symbol are light, as the quiet zone around it is.
    public subscript(x: Int, y: Int) -> Bool {
        guard (0..<size).contains(x), (0..<size).contains(y) else { return false }
        return modules[y * size + x]
    }

    /// Byte-mode encoding of `text` (UTF-8) in the smallest version 1...40 that fits,
    /// with the mask that has the lowest penalty score.
    /// - Throws: `QRCodeError.dataTooLong` when the text does not fit in version 40.
    public init(text: String, errorCorrection: ErrorCorrection = .medium) throws {
        try self.init(text: text, errorCorrection: errorCorrection, forcedMask: nil)
    }

    /// As the public initializer, but with `forcedMask` (0...7) applied instead of the best mask
    /// when it is given; used to compare against other encoders module for module.
    init(text: String, errorCorrection ecl: ErrorCorrection, forcedMask: Int?) throws {
        precondition(forcedMask.map { (0...7).contains($0) } ?? true, "mask must be 0...7")
        let data = Array(text.utf8)
        guard let version = (1...40).first(where: { Self.fits(byteCount: data.count, version: $0, ecl) }) else {
            // Version 40 capacity less the 4-bit mode indicator and 16-bit character count.
            let maximum = (Self.dataCodewordCount(version: 40, ecl) * 8 - 4 - 16) / 8
            throw QRCodeError.dataTooLong(byteCount: data.count, maximumByteCount: maximum)
        }
        let codewords = Self.interleavedCodewords(Self.dataCodewords(data, version: version, ecl), version: version, ecl)

        var template = Grid(version: version)
        template.drawFunctionPatterns(version: version)
        template.placeCodewords(codewords)

        var best = (mask: -1, penalty: Int.max, modules: [Bool]())
        for candidate in forcedMask.map({ [$0] }) ?? Array(0...7) {
            var grid = template
            grid.applyMask(candidate)
            grid.drawFormatBits(ecl, mask: candidate)
            let penalty = forcedMask == nil ? grid.penalty() : 0
            if penalty < best.penalty {
                best = (candidate, penalty, grid.modules)
            }
        }
        self.size = template.size
        self.version = version
        self.mask = best.mask
        self.errorCorrection = ecl
        self.modules = best.modules
    }

    /// The symbol drawn with Unicode half blocks (`▀ ▄ █` and space), two module rows per line,
    /// inside a 4-module quiet zone. Lines are `size + 8` characters wide, there are
    /// `(size + 9) / 2` of them, joined by `"\n"` without a trailing newline.
    ///
    /// - Parameter invert: `false` (default) draws dark modules as blocks, for terminals with dark
    ///   text on a light background. `true` draws light modules and the quiet zone as blocks
    ///   instead, so that on a light-on-dark terminal the symbol still appears dark on light,
    ///   which is what most scanners expect.
    public func terminalString(invert: Bool = false) -> String {
        let quietZone = 4
        let range = -quietZone..<(size + quietZone)
        func inked(_ x: Int, _ y: Int) -> Bool { range.contains(y) && self[x, y] != invert }
        var lines: [String] = []
        for top in stride(from: range.lowerBound, to: range.upperBound, by: 2) {
            var line = ""
            for x in range {
                switch (inked(x, top), inked(x, top + 1)) {
                case (true, true): line.append("█")
                case (true, false): line.append("▀")
                case (false, true): line.append("▄")
                case (false, false): line.append(" ")
                }
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }
}

// MARK: - Capacity and codeword construction

extension QRCode {
    /// Error-correction codewords per block, indexed `[ordinal][version]` (ISO/IEC 18004 Table 9).
    private static let eccCodewordsPerBlock: [[Int]] = [
        [0, 7, 10, 15, 20, 26, 18, 20, 24, 30, 18, 20, 24, 26, 30, 22, 24, 28, 30, 28, 28,
         28, 28, 30, 30, 26, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30],
        [0, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24, 28, 28, 26, 26, 26,
         26, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28],
        [0, 13, 22, 18, 26, 18, 24, 18, 22, 20, 24, 28, 26, 24, 20, 30, 24, 28, 28, 26, 30,
         28, 30, 30, 30, 30, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30],
        [0, 17, 28, 22, 16, 22, 28, 26, 26, 24, 28, 24, 28, 22, 24, 24, 30, 28, 28, 26, 28,
         30, 24, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30],
    ]

    /// Number of error-correction blocks, indexed `[ordinal][version]` (ISO/IEC 18004 Table 9).
    private static let errorCorrectionBlockCount: [[Int]] = [
        [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8,
         8, 9, 9, 10, 12, 12, 12, 13, 14, 15, 16, 17, 18, 19, 19, 20, 21, 22, 24, 25],
        [0, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16,
         17, 17, 18, 20, 21, 23, 25, 26, 28, 29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49],
        [0, 1, 1, 2, 2, 4, 4, 6, 6, 8, 8, 8, 10, 12, 16, 12, 17, 16, 18, 21, 20,
         23, 23, 25, 27, 29, 34, 34, 35, 38, 40, 43, 45, 48, 51, 53, 56, 59, 62, 65, 68],
        [0, 1, 1, 2, 4, 4, 4, 5, 6, 8, 8, 11, 11, 16, 16, 18, 16, 19, 21, 25, 25,
         25, 34, 30, 32, 35, 37, 40, 42, 45, 48, 51, 54, 57, 60, 63, 66, 70, 74, 77, 81],
    ]

    /// Modules available for codewords (data and error correction, including remainder bits)
    /// once all function patterns and format/version information are placed.
    fileprivate static func rawDataModuleCount(version: Int) -> Int {
        var result = (16 * version + 128) * version + 64
        if version >= 2 {
            let alignmentCount = version / 7 + 2
            result -= (25 * alignmentCount - 10) * alignmentCount - 55
            if version >= 7 { result -= 36 }
        }
        return result
    }

    /// Data codewords (excluding error correction) a symbol of this version and level holds.
    private static func dataCodewordCount(version: Int, _ ecl: ErrorCorrection) -> Int {
        rawDataModuleCount(version: version) / 8
            - eccCodewordsPerBlock[ecl.ordinal][version] * errorCorrectionBlockCount[ecl.ordinal][version]
    }

    /// Width of the byte-mode character count field (ISO/IEC 18004 Table 3).
    private static func characterCountBits(version: Int) -> Int { version <= 9 ? 8 : 16 }

    private static func fits(byteCount: Int, version: Int, _ ecl: ErrorCorrection) -> Bool {
        4 + characterCountBits(version: version) + 8 * byteCount <= dataCodewordCount(version: version, ecl) * 8
    }

    /// Mode indicator, character count, data, terminator and padding, packed into codewords.
    private static func dataCodewords(_ data: [UInt8], version: Int, _ ecl: ErrorCorrection) -> [UInt8] {
        let capacityBits = dataCodewordCount(version: version, ecl) * 8
        var bits: [Bool] = []
        func append(_ value: Int, count: Int) {
            for i in stride(from: count - 1, through: 0, by: -1) { bits.append((value >> i) & 1 == 1) }
        }
        append(0b0100, count: 4)  // byte mode
        append(data.count, count: characterCountBits(version: version))
        for byte in data { append(Int(byte), count: 8) }
        append(0, count: min(4, capacityBits - bits.count))  // terminator
        append(0, count: (8 - bits.count % 8) % 8)
        var padByte = 0xEC
        while bits.count < capacityBits {
            append(padByte, count: 8)
            padByte ^= 0xEC ^ 0x11
        }
        return stride(from: 0, to: bits.count, by: 8).map { start in
            bits[start..<start + 8].reduce(0) { $0 << 1 | ($1 ? 1 : 0) }
        }
    }

    /// Splits data codewords into blocks, appends each block's Reed–Solomon codewords and
    /// interleaves them: data codewords column by column across blocks, then the EC codewords.
    private static func interleavedCodewords(_ data: [UInt8], version: Int, _ ecl: ErrorCorrection) -> [UInt8] {
        let blockCount = errorCorrectionBlockCount[ecl.ordinal][version]
        let eccLength = eccCodewordsPerBlock[ecl.ordinal][version]
        let rawCodewords = rawDataModuleCount(version: version) / 8
        let shortBlockCount = blockCount - rawCodewords % blockCount
        let shortDataLength = rawCodewords / blockCount - eccLength
        let generator = ReedSolomon.generator(degree: eccLength)

        var dataBlocks: [ArraySlice<UInt8>] = []
        var eccBlocks: [[UInt8]] = []
        var offset = 0
        for index in 0..<blockCount {
            let length = shortDataLength + (index < shortBlockCount ? 0 : 1)
            let block = data[offset..<offset + length]
            offset += length
            dataBlocks.append(block)
            eccBlocks.append(ReedSolomon.remainder(of: block, generator: generator))
        }

        var result: [UInt8] = []
        result.reserveCapacity(rawCodewords)
        for column in 0...shortDataLength {
            for block in dataBlocks where column < block.count {
                result.append(block[block.startIndex + column])
            }
        }
        for column in 0..<eccLength {
            for block in eccBlocks { result.append(block[column]) }
        }
        return result
    }
}

// MARK: - Reed–Solomon over GF(256)

/// Reed–Solomon error-correction codewords over GF(2⁸) with the primitive polynomial
/// x⁸ + x⁴ + x³ + x² + 1 (0x11D) and generator roots α⁰ … α^(n−1), α = 2.
private enum ReedSolomon {
    static func multiply(_ a: UInt8, _ b: UInt8) -> UInt8 {
        var product = 0
        for i in stride(from: 7, through: 0, by: -1) {
            product = (product << 1) ^ ((product >> 7) * 0x11D)
            product ^= ((Int(b) >> i) & 1) * Int(a)
        }
        return UInt8(product)
    }

    /// Coefficients of ∏(x − αⁱ) for i in 0..<degree, highest power first, leading 1 omitted.
    static func generator(degree: Int) -> [UInt8] {
        var coefficients = [UInt8](repeating: 0, count: degree)
        coefficients[degree - 1] = 1
        var root: UInt8 = 1
        for _ in 0..<degree {
            for j in 0..<degree {
                coefficients[j] = multiply(coefficients[j], root)
                if j + 1 < degree { coefficients[j] ^= coefficients[j + 1] }
            }
            root = multiply(root, 0x02)
        }
        return coefficients
    }

    /// Remainder of `data(x) · x^degree` divided by the generator polynomial.
    static func remainder(of data: ArraySlice<UInt8>, generator: [UInt8]) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: generator.count)
        for byte in data {
            let factor = byte ^ result.removeFirst()
            result.append(0)
            for i in result.indices { result[i] ^= multiply(generator[i], factor) }
        }
        return result
    }
}

// MARK: - Module grid

/// The symbol under construction: module colours plus which modules belong to function patterns
/// (finders, separators, timing, alignment, format and version information), which masking skips.
private struct Grid {
    let size: Int
    var modules: [Bool]
    var isFunction: [Bool]

    init(version: Int) {
        size = version * 4 + 17
        modules = Array(repeating: false, count: size * size)
        isFunction = modules
    }

    private mutating func setFunction(_ x: Int, _ y: Int, _ dark: Bool) {
        modules[y * size + x] = dark
        isFunction[y * size + x] = true
    }

    mutating func drawFunctionPatterns(version: Int) {
        for i in 0..<size {
            setFunction(6, i, i % 2 == 0)
            setFunction(i, 6, i % 2 == 0)
        }
        for (x, y) in [(3, 3), (size - 4, 3), (3, size - 4)] {
            // 7×7 finder with its light separator ring, clipped at the symbol edge.
            for dy in -4...4 {
                for dx in -4...4 where (0..<size).contains(x + dx) && (0..<size).contains(y + dy) {
                    let distance = max(abs(dx), abs(dy))
                    setFunction(x + dx, y + dy, distance != 2 && distance != 4)
                }
            }
        }
        let positions = Self.alignmentPatternPositions(version: version)
        for (i, x) in positions.enumerated() {
            for (j, y) in positions.enumerated() {
                let last = positions.count - 1
                if (i == 0 && j == 0) || (i == 0 && j == last) || (i == last && j == 0) { continue }
                for dy in -2...2 {
                    for dx in -2...2 { setFunction(x + dx, y + dy, max(abs(dx), abs(dy)) != 1) }
                }
            }
        }
        drawFormatBits(.low, mask: 0)  // reserves the area; rewritten once the mask is chosen
        if version >= 7 { drawVersionBits(version) }
    }

    /// Centre coordinates (in both axes) of alignment patterns (ISO/IEC 18004 Annex E).
    static func alignmentPatternPositions(version: Int) -> [Int] {
        guard version > 1 else { return [] }
        let count = version / 7 + 2
        let step = (version * 8 + count * 3 + 5) / (count * 4 - 4) * 2
        let last = version * 4 + 10
        return [6] + stride(from: count - 2, through: 0, by: -1).map { last - $0 * step }
    }

    /// 15-bit format information: level and mask, BCH(15,5) protected, XOR 0x5412, in two copies,
    /// plus the always-dark module next to the bottom-left finder.
    mutating func drawFormatBits(_ ecl: QRCode.ErrorCorrection, mask: Int) {
        let data = ecl.formatBits << 3 | mask
        var remainder = data
        for _ in 0..<10 { remainder = (remainder << 1) ^ ((remainder >> 9) * 0x537) }
        let bits = (data << 10 | remainder) ^ 0x5412
        func bit(_ i: Int) -> Bool { (bits >> i) & 1 == 1 }

        for i in 0...5 { setFunction(8, i, bit(i)) }
        setFunction(8, 7, bit(6))
        setFunction(8, 8, bit(7))
        setFunction(7, 8, bit(8))
        for i in 9..<15 { setFunction(14 - i, 8, bit(i)) }

        for i in 0..<8 { setFunction(size - 1 - i, 8, bit(i)) }
        for i in 8..<15 { setFunction(8, size - 15 + i, bit(i)) }
        setFunction(8, size - 8, true)
    }

    /// 18-bit version information (BCH(18,6) with generator 0x1F25) in two 6×3 blocks.
    private mutating func drawVersionBits(_ version: Int) {
        var remainder = version
        for _ in 0..<12 { remainder = (remainder << 1) ^ ((remainder >> 11) * 0x1F25) }
        let bits = version << 12 | remainder
        for i in 0..<18 {
            let dark = (bits >> i) & 1 == 1
            let a = size - 11 + i % 3, b = i / 3
            setFunction(a, b, dark)
            setFunction(b, a, dark)
        }
    }

    /// Places codeword bits, most significant first, in two-column strips from the right edge,
    /// zig-zagging up and down and skipping function modules and the vertical timing column.
    /// Remainder modules stay light.
    mutating func placeCodewords(_ codewords: [UInt8]) {
        var bitIndex = 0
        var right = size - 1
        while right >= 1 {
            if right == 6 { right = 5 }
            let upward = (right + 1) & 2 == 0
            for vertical in 0..<size {
                let y = upward ? size - 1 - vertical : vertical
                for x in [right, right - 1] where !isFunction[y * size + x] && bitIndex < codewords.count * 8 {
                    modules[y * size + x] = (codewords[bitIndex >> 3] >> (7 - (bitIndex & 7))) & 1 == 1
                    bitIndex += 1
                }
            }
            right -= 2
        }
    }

    /// Inverts every non-function module where mask condition `mask` (ISO/IEC 18004 Table 10) holds;
    /// `x` is the column and `y` the row.
    mutating func applyMask(_ mask: Int) {
        for y in 0..<size {
            for x in 0..<size where !isFunction[y * size + x] {
                let invert = switch mask {
                case 0: (x + y) % 2 == 0
                case 1: y % 2 == 0
                case 2: x % 3 == 0
                case 3: (x + y) % 3 == 0
                case 4: (x / 3 + y / 2) % 2 == 0
                case 5: x * y % 2 + x * y % 3 == 0
                case 6: (x * y % 2 + x * y % 3) % 2 == 0
                default: ((x + y) % 2 + x * y % 3) % 2 == 0
                }
                if invert { modules[y * size + x].toggle() }
            }
        }
    }

    /// Penalty score of the finished symbol (ISO/IEC 18004 §7.8.3): runs of five or more equal
    /// modules, 2×2 blocks of one colour, finder-like 1:1:3:1:1 patterns beside four light modules,
    /// and the deviation of the dark proportion from 50 %.
    func penalty() -> Int {
        var total = 0
        for i in 0..<size {
            total += Self.linePenalty((0..<size).map { modules[i * size + $0] })
            total += Self.linePenalty((0..<size).map { modules[$0 * size + i] })
        }
        for y in 0..<(size - 1) {
            for x in 0..<(size - 1) {
                let colour = modules[y * size + x]
                if modules[y * size + x + 1] == colour && modules[(y + 1) * size + x] == colour
                    && modules[(y + 1) * size + x + 1] == colour {
                    total += 3
                }
            }
        }
        let dark = modules.count(where: { $0 })
        total += 10 * (abs(dark * 20 - modules.count * 10) / modules.count)
        return total
    }

    /// Rules 1 and 3 for one row or column, computed on its runs of equal modules.
    /// Rule 3 looks for dark–light–dark–light–dark runs in the ratio 1:1:3:1:1 (module width n
    /// of any size) with a light run of at least 4n on one side and at least n on the other;
    /// the quiet zone counts as unbounded light, and a pattern light enough on both sides
    /// scores twice. This is the reading used by Nayuki's widely used qrcodegen.
    private static func linePenalty(_ line: [Bool]) -> Int {
        // Alternating run lengths, light first and last (either may be 0), so odd indices are dark.
        var runs = [0]
        var colour = false
        for module in line {
            if module == colour {
                runs[runs.count - 1] += 1
            } else {
                runs.append(1)
                colour = module
            }
        }
        if colour { runs.append(0) }

        var score = runs.reduce(0) { $0 + ($1 >= 5 ? 3 + ($1 - 5) : 0) }
        func lightRun(_ index: Int) -> Int { index == 0 || index == runs.count - 1 ? Int.max : runs[index] }
        for i in stride(from: 1, to: runs.count - 5, by: 2) {
            let n = runs[i]
            guard runs[i + 1] == n, runs[i + 2] == 3 * n, runs[i + 3] == n, runs[i + 4] == n else { continue }
            let before = lightRun(i - 1), after = lightRun(i + 5)
            if before >= 4 * n && after >= n { score += 40 }
            if after >= 4 * n && before >= n { score += 40 }
        }
        return score
    }
}
