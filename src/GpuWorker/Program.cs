using TorchSharp;
var x = torch.randn(2, 3, 8, 8);
var w = torch.randn(4, 3, 3, 3);
var y = torch.nn.functional.conv2d(x, w);
Console.WriteLine(string.Join(",", y.shape));
